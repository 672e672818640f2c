"""The composition behind ``mtcp_app_join``: which engine runs a context, and around it.

Offline (``config.pcap``) the offline engine replays the file (``offline.run_offline``), with
the kernel's verdicts modelled in process (engine/kernel_twin.py); every frame of a flow
without a verdict goes through the core, except the regular frames of the flows of
MOSX_STATE_ONLY listeners, which the twin fast-forwards (the same outputs). Live
(``config.iface``) a ``LiveRun`` (engine/live_run.py) puts together the hybrid fast path
(mosxdp.engine.hybrid: the XDP program filters with the monitor filters of the start and
keeps the stack's kernel
verdicts), the AF_XDP engine (mosxdp.engine.live), the status line and metrics
(mosxdp.engine.status) and the capability drop after set-up (mosxdp.io.privileges). Either
way ``run`` returns the run's ``RunResult``. Several contexts share one run
(``run_contexts``, mosxdp.engine.group).
"""
from __future__ import annotations

import errno
import os
import socket
import stat

from .group import GroupContext
from .offline import run_offline
from .result import RunResult


def run_context(mctx) -> int:
    """mtcp_app_join: :func:`run`, with the counters on stderr when the configuration says
    so (mos.conf's ``stat_print``, TOML ``stats``), and 0 like mOS."""
    return run_contexts([mctx])


def run_contexts(contexts) -> int:
    """mtcp_app_join of one of several contexts: one run that feeds them all (each flow to
    one of them), as :func:`run_context` does for one."""
    mctx = GroupContext(contexts) if len(contexts) > 1 else contexts[0]
    run(mctx, print_stats=mctx.config.stats)
    return 0


def run(mctx, print_stats: bool = False, progress: bool = False) -> RunResult:
    """Run the datapath the context's configuration names until its input ends or a signal
    stops it. ``print_stats``: counters on stderr (live a status line every second, offline
    a summary at the end; the CLI's --stats). ``progress``: offline, a progress line on
    stderr (the CLI's, on a terminal)."""
    config = mctx.config
    if config.workers > 1:
        raise OSError(errno.EINVAL, f"[datapath] workers = {config.workers}: a run split over "
                                    "several workers is made by `mosxdp run` (mtcp_app_join "
                                    "runs one)")
    if config.pcap is not None:
        return run_offline(mctx, config.pcap, config.write, config.batch_size, print_stats,
                           progress)
    if config.iface is None:
        raise OSError(22, "nothing to monitor: give a pcap file (--pcap) or an interface (--iface)")
    # The live engines are imported for a live run only (offline they cost the start-up).
    from .live_run import LiveRun
    return LiveRun(mctx, print_stats).run()


def preflight(config) -> None:
    """What can be checked before an app's set-up creates its outputs and before anything
    is attached, so that a bad input or interface costs nothing. Offline: the input opens
    as a capture (only a regular file: a pipe can be read once). Live: the interfaces
    exist, have the RX queues asked for, the process may attach XDP programs, and the
    metrics port is free. Raises OSError (errno EINVAL or ENODEV for a bad value),
    PcapFormatError or XdpError, each with one line."""
    if config.workers > 1:
        from .workers import check_input
        check_input(config)
    if config.pcap is not None:
        from ..io.pcap import PcapReader
        if config.pcap != "-":
            try:
                regular = stat.S_ISREG(os.stat(config.pcap).st_mode)
            except OSError:
                regular = True    # the reader names the problem
            if regular:
                PcapReader(config.pcap).close()
        return
    if config.iface is None:
        return
    if config.observe and config.fail_closed:
        raise OSError(errno.EINVAL, "--observe and --fail-closed exclude each other: observe-only "
                                    "the kernel forwards every frame, with or without the monitor")
    from ..io.netdev import rx_queue_count
    for option, name in (("--iface", config.iface), ("--peer", config.peer)):
        if name is None:
            continue
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise OSError(errno.ENODEV, f"{option} {name}: no such interface in this network "
                          "namespace (ip link shows them)") from None
    if config.queues != "all":
        for name in filter(None, (config.iface, config.peer)):
            available = rx_queue_count(name)
            if config.queues > available:
                raise OSError(errno.EINVAL, f"[datapath] queues = {config.queues}: {name} has "
                              f"{available} RX queue{'s' if available != 1 else ''}")
    from ..io.privileges import check_privileges
    check_privileges()
    if config.metrics_port:
        # The port the metrics server binds after set-up (as http.server binds it).
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", config.metrics_port))
            except OSError as exc:
                raise OSError(exc.errno, f"--metrics-port {config.metrics_port}: cannot listen "
                              f"on 127.0.0.1:{config.metrics_port}: {exc.strerror}") from None
