"""The public face of the mOS constants: the core defines them (core/constants.py), with the
numeric values of mos_api.h / mtcp_api.h; `mosxdp` and `from mosxdp.constants import *`
re-export them."""
from .core.constants import *  # noqa: F401,F403
from .core.constants import MosEvent, MosHook, SocketType, TcpState  # noqa: F401
