"""The engines that drive a core `Stack`: offline (pcap), live (AF_XDP), the hybrid kernel
fast path, and the status line and metrics."""
from .offline import OfflineEngine, run_context, run_frames, run_offline, summary_line  # noqa: F401
