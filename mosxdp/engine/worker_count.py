"""How many workers a run gets by default (``workers = "auto"``): read by the command
line for every run, so that it imports the live modules only for a live run."""
import os


def auto_workers(config, module) -> int:
    """The worker count of ``workers = "auto"`` (the default): live, one per RX queue the
    run binds on each interface, up to the CPUs the process may use (observe-only, where
    the flow hash picks a worker's ring, also up to MX_OBSERVE_MAX_RINGS); 1 offline (a
    split pays for its start-up and merge only on large captures: asked for with
    --workers N) and for an app that runs on one worker (``ONE_WORKER``)."""
    if config.iface is None or getattr(module, "ONE_WORKER", None):
        return 1
    from ..io.bpfstructs import MX_OBSERVE_MAX_RINGS
    from ..io.netdev import rx_queue_count
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    count = cpus
    for name in filter(None, (config.iface, config.peer)):
        try:
            available = rx_queue_count(name)
        except OSError:
            return 1     # preflight names the missing interface
        count = min(count, available if config.queues == "all" else min(config.queues, available))
    if config.observe:
        count = min(count, MX_OBSERVE_MAX_RINGS)
    return max(1, count)
