"""The attributes of a Stack that every frame reads or writes, in one base class.

Stack (stack.py) is its parts' mixins over this class. In plain Python it is an empty base
and the attributes live in the instance's dict as any other. The compiled build
(stack_state.pxd) makes it an extension type whose fields are these attributes, so that
Stack.process and StreamDelivery._receive_payload, which declare ``self`` of this type, read
and write them as C struct members instead of through the instance dict (a lookup each,
about 20 a frame).
"""


class StackState:
    """Base of Stack: the per-frame attributes (stack_state.pxd lists them). Each part's
    _init_* method sets its own, as before."""
