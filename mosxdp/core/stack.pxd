# Compiled declarations of stack.py (setup.py): the types Stack.process declares.
from mosxdp.core.packet cimport Packet
from mosxdp.core.flow cimport Flow, Side
from mosxdp.core.stack_state cimport StackState
