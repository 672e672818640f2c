# Compiled declarations of streams.py (setup.py): the types StreamDelivery._receive_payload
# declares.
from mosxdp.core.packet cimport Packet
from mosxdp.core.flow cimport Flow, Side
from mosxdp.core.stack_state cimport StackState
from mosxdp.core.reassembly cimport StreamBuffer
