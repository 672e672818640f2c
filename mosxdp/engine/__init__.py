"""The engines that drive a core `Stack`: offline (pcap), live (AF_XDP), the hybrid kernel
fast path, the status line and metrics, and the composition that runs a context
(``run_context``, behind mtcp_app_join) with its typed ``RunResult``. The face is loaded
on first use (mosxdp/lazy_exports.py)."""
from ..lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    ".offline": ("OfflineEngine", "run_frames", "run_offline", "summary_line"),
    ".result": ("RunResult",),
    ".run": ("run_context", "run_contexts"),
})
