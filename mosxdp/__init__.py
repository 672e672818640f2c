"""mosxdp: the mOS monitoring stack in Python on eBPF/XDP.

`from mosxdp import *` gives the whole mOS API: the mtcp_* calls, the MOS_*
constants with their C values, and the C structures (PktInfo, TcpBufInfo,
TcpRingFragment) plus TcpState.
"""
from .core import compiled  # noqa: F401  (first: MOSXDP_PURE_PYTHON=1 acts before the imports below)
from .api import *  # noqa: F401,F403
from .api import __all__ as _api_all
from .constants import *  # noqa: F401,F403
from .constants import TcpState, MosEvent, MosHook, SocketType
from .facade import Monitor  # noqa: F401  (explicit import only: not in __all__, `import *` stays the C API)
from .types import (DatagramFlowStats, FlowStats, MonitorFilter, MtcpConf, PktInfo, SessionEvent, TcpBufInfo,
                    TcpRingFragment, Timeval, monitor_filter, timeval)

from . import constants as _constants

__all__ = list(_api_all) + [name for name in dir(_constants)
                            if name.isupper() or name.startswith(("MOS", "TCP_", "SOL_", "SO_", "TH_"))] + [
    "TcpState", "MosEvent", "MosHook", "SocketType", "DatagramFlowStats", "FlowStats", "MonitorFilter", "MtcpConf",
    "PktInfo", "TcpBufInfo", "TcpRingFragment", "monitor_filter", "Timeval", "timeval", "SessionEvent",
]
