# Compiled declarations of fast_forward.py (setup.py): the types deliver() declares.
from mosxdp.core.flow cimport Flow, Side
from mosxdp.core.stack_state cimport StackState
from mosxdp.core.reassembly cimport StreamBuffer
