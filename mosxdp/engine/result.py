"""What one run of a context's datapath did: the engine's typed result."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunResult:
    """One run of a context (``mosxdp.engine.run.run``), offline or live.

    ``frames_in``: frames read (pcap records, or frames taken from the AF_XDP sockets);
    ``frames_out``: frames written or transmitted (forwarded, and the apps' sent frames);
    ``seconds``: the run's wall time; ``exit_reason``: why it ended ("end of input" offline;
    live "signal SIGINT"/"signal SIGTERM", "stop" or "duration").

    Live only (None offline): ``datapath``, the live engine's final counters (its own, the XDP
    program's, the processor's, the frames lost by reason, the UMEM accounting and audit:
    ``LiveEngine.final_stats``);
    ``kernel_filter`` (``hybrid.KernelFilter``), the filter the XDP program ran with;
    ``verdict_entries_left`` in the kernel verdict map at the end; ``privileges``, what the
    capability drop after set-up did (``io.privileges.after_setup``).

    A split offline run (``--workers N``, engine/workers.py): ``workers``, per worker its
    frames, seconds and pid, and ``split``, where the run's time went: the plan of the
    capture (seconds, and the parts read at once), the workers (from the plan until the
    last one's result), the merge and the end (None otherwise).
    """

    mode: str
    frames_in: int
    frames_out: int
    seconds: float
    exit_reason: str
    datapath: dict | None = None
    kernel_filter: object = None
    verdict_entries_left: int | None = None
    privileges: dict | None = None
    workers: list | None = None
    split: dict | None = None

    def live_stats(self) -> dict | None:
        """The live datapath's counters as one JSON-ready dict (None offline)."""
        if self.datapath is None:
            return None
        kf = self.kernel_filter
        return {**self.datapath,
                "kernel_filter": {"c_expr": kf.c_expr, "all_ip": kf.filter_all_ip, "why": kf.why},
                "verdict_entries_left": self.verdict_entries_left,
                "privileges": self.privileges}
