"""What a run reports at its end (``mosxdp run``): the live summary lines on stderr and the
counters as JSON (``--stats-json``)."""
import json
import sys

from .loss import loss_line
from .offline import summary_line


def write_stats_json(output, mctx, result):
    """The counters as JSON (``result``: the run's, None when it failed) into ``output``,
    the file opened at start."""
    from ..core.compiled import hot_path
    stack = mctx.stack
    out = {"stack": dict(stack.counters), "malformed": dict(stack.malformed),
           "callback_errors": dict(stack.callback_errors),
           "reassembly_mem_peak": stack.reassembly_mem_peak,
           "hot_path": hot_path(),
           "sinks": [sink.stats() for sink in mctx.outputs.sinks()],
           "live": result.live_stats() if result is not None else None}
    if result is not None and result.workers is not None:
        out["workers"] = result.workers
    if result is not None and result.split is not None:
        out["split"] = result.split
    output.write(json.dumps(out, indent=1, default=str) + "\n")
    output.close()


def print_live_summary(mctx, result):
    """At exit of a live run: the core's counters and the datapath's (only the core's when
    the run failed before its end: ``result`` None)."""
    if result is None:
        print(summary_line(mctx.stack, 0, 0, None), file=sys.stderr)
        return
    print(summary_line(mctx.stack, result.frames_in, result.frames_out, None), file=sys.stderr)
    datapath = result.datapath
    xdp = datapath.get("xdp")
    if isinstance(xdp, dict) and xdp:
        print("mosxdp: xdp " + ", ".join(f"{k} {v}" for k, v in xdp.items() if v), file=sys.stderr)
    proc = datapath.get("processor") or {}
    kernel = {k[len("kernel_"):]: v for k, v in proc.items() if k.startswith("kernel_") and v}
    print("mosxdp: kernel " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in kernel.items())
                                        or "none")
          + f", entries left {result.verdict_entries_left}; kernel filter: {result.kernel_filter.why}",
          file=sys.stderr)
    print(loss_line(datapath.get("lost") or {}, result.frames_in), file=sys.stderr)
    if result.workers:
        print("mosxdp: workers %d: " % len(result.workers) + "; ".join(
            f"{w['index']} failed" if w.get("failed") else
            f"{w['index']} (pid {w['pid']}, queues {','.join(map(str, w['queues']))}) "
            f"frames {w['frames']}, flows {w['flows_created']}" for w in result.workers),
            file=sys.stderr)
    accounting = datapath.get("accounting")
    if accounting:
        print(f"mosxdp: umem frames {accounting}"
              + (f" ERROR {datapath['accounting_error']}" if "accounting_error" in datapath else ""),
              file=sys.stderr)
