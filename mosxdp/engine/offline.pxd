# Compiled declarations of offline.py (setup.py): the types the replay loop declares.
from mosxdp.core.flow cimport Flow
from mosxdp.core.stack_state cimport StackState
