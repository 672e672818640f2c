"""The engines that drive a core `Stack`: offline (pcap), live (AF_XDP), the hybrid kernel
fast path, the status line and metrics, and the composition that runs a context
(``run_context``, behind mtcp_app_join) with its typed ``RunResult``."""
from .offline import OfflineEngine, run_frames, run_offline, summary_line  # noqa: F401
from .result import RunResult  # noqa: F401
from .run import run_context, run_contexts  # noqa: F401
