# Compiled declarations of events.py (setup.py): the type EventDispatch's per-frame methods
# declare for self.
from mosxdp.core.stack_state cimport StackState
