# Compiled declarations of tcp.py (setup.py): the types TcpEmulation's methods declare (by
# name: flow.py imports tcp.py, so tcp.py cannot import Flow and Side).
from mosxdp.core.packet cimport Packet
from mosxdp.core.flow cimport Flow, Side
from mosxdp.core.stack_state cimport StackState
