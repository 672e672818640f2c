"""Live feedback: a status line every second (--stats), a warning when frames are lost,
and Prometheus metrics (--metrics-port N) for a running monitor.

All read counters the datapath keeps anyway (the engine's, the core's, the XDP
program's per-CPU counters, the kernel's statistics of each AF_XDP socket); nothing is
added to the per-frame path. ``LiveStatus.tick`` runs from the engine's loop (after a
batch or an idle poll) and reads the counters at most once per interval; the metrics
server answers from its own thread.
"""
import sys
import threading
import time

from .loss import REASONS, loss_share, reasons_text

#: seconds between two loss warnings at least
WARN_EVERY = 10.0


class LiveStatus:
    """Snapshots of the live counters and the rates between two of them.

    ``print_lines``: the status line every ``interval`` seconds (--stats).
    ``warn_percent``: one warning line on the stream when more than that percentage of
    the frames was lost over an interval (lost / (read + lost); 0: never), at most one
    every ``warn_every`` seconds (the next says how many were lost meanwhile)."""

    def __init__(self, engine, stack, interval=1.0, stream=None, *, print_lines=True,
                 warn_percent=1.0, warn_every=WARN_EVERY, clock=time.monotonic, outputs=None):
        self.engine = engine
        self.stack = stack
        self.outputs = outputs     # io.outputs.Outputs: its network sinks' counters
        self.interval = interval
        self.stream = stream or sys.stderr
        self.print_lines = print_lines
        self.warn_percent = warn_percent
        self.warn_every = warn_every
        self.clock = clock
        self._next = clock() + interval
        self._last = self.snapshot()   # the first interval starts now
        self._next_warning = 0.0
        self._warned = None   # the snapshot of the last warning
        self.warnings = 0

    @property
    def active(self) -> bool:
        """Whether :meth:`tick` has anything to do (a status line or the loss check)."""
        return self.print_lines or self.warn_percent > 0

    def snapshot(self):
        engine = self.engine
        counters = engine.counters
        xdp = engine.xdp_counters() or {}
        lost = engine.lost(xdp)
        out_frames = counters.get("forwarded", 0) + counters.get("outbox_sent", 0)
        return {
            "time": self.clock(),
            "frames_in": counters.get("frames", 0),
            "frames_out": out_frames,
            # Inline the engine counts every frame a verdict dropped, the core's among them;
            # passive it drops nothing on the wire: the core's verdicts.
            "dropped": counters.get("dropped", 0) if getattr(engine, "inline", False)
            else self.stack.counters.get("dropped", 0),
            "flows": self.stack.flow_count(),
            "kernel_rx": xdp.get("rx_total", 0),
            "kernel_to_python": xdp.get("to_xsk", 0) + xdp.get("observed", 0),
            "callback_errors": self.stack.counters.get("callback_errors", 0),
            "lost": lost,
            "lost_total": sum(lost.values()),
            "sinks": [sink.stats() for sink in self.outputs.sinks()]
            if self.outputs is not None else [],
        }

    def tick(self):
        """Once an interval has passed since the last: the status line (``print_lines``)
        and the loss check."""
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        snap = self.snapshot()
        last, self._last = self._last, snap
        if self.print_lines:
            print(self.status_line(last, snap), file=self.stream, flush=True)
        if self.warn_percent > 0:
            self._check_loss(last, snap)

    @staticmethod
    def status_line(last, snap) -> str:
        seconds = max(snap["time"] - last["time"], 1e-6)
        rate_in = (snap["frames_in"] - last["frames_in"]) / seconds
        rate_out = (snap["frames_out"] - last["frames_out"]) / seconds
        kernel = snap["kernel_rx"] - last["kernel_rx"]
        to_python = snap["kernel_to_python"] - last["kernel_to_python"]
        share = f"{100.0 * to_python / kernel:.1f}%" if kernel else "-"
        lost = "lost 0"
        if snap["lost_total"]:
            now = snap["lost_total"] - last["lost_total"]
            part, _ = loss_share(_delta(last, snap), snap["frames_in"] - last["frames_in"])
            lost = (f"lost {now / seconds / 1e3:.1f} kpps ({100.0 * part:.1f}%), total "
                    f"{snap['lost_total']} ({reasons_text(snap['lost'])})")
        sinks = snap.get("sinks") or []
        # Network sinks: records queued and dropped, and which of them is down.
        sink_text = "".join(
            f", sink {s['sink']} {'up' if s['up'] else 'DOWN'} queued {s['queued']} dropped "
            f"{s['dropped'] + s['refused']}" for s in sinks)
        return (f"mosxdp: in {rate_in / 1e3:.1f} kpps, out {rate_out / 1e3:.1f} kpps, "
                f"kernel {kernel / seconds / 1e3:.1f} kpps ({share} to Python), "
                f"flows {snap['flows']}, verdict drops {snap['dropped']}, {lost}, "
                f"callback errors {snap['callback_errors']}{sink_text}")

    def _check_loss(self, last, snap) -> None:
        lost = snap["lost_total"] - last["lost_total"]
        by_reason = _delta(last, snap)
        share, seen = loss_share(by_reason, snap["frames_in"] - last["frames_in"])
        if not lost or 100.0 * share <= self.warn_percent or snap["time"] < self._next_warning:
            return
        self._next_warning = snap["time"] + self.warn_every
        seconds = snap["time"] - last["time"]
        more = ""
        if self._warned is not None and last["lost_total"] > self._warned["lost_total"]:
            more = f", {last['lost_total'] - self._warned['lost_total']} more since the last warning"
        self._warned = snap
        behind = by_reason.get("fill_ring_empty") or by_reason.get("rx_ring_full")
        of = f" of {seen}" if seen else ""
        print(f"mosxdp: warning: lost {lost}{of} frames ({100.0 * share:.1f}%) in the last "
              f"{seconds:.1f} s ({reasons_text(by_reason)})"
              f"{more}, {snap['lost_total']} in all"
              + ("; Python is not keeping up (see Loss in docs/datapath.md)" if behind else ""),
              file=self.stream, flush=True)
        self.warnings += 1


def _delta(last, snap) -> dict:
    """The frames lost between two snapshots, by reason."""
    return {k: v - last["lost"].get(k, 0) for k, v in snap["lost"].items()}


# The core's counters (mosxdp.core.stack COUNTER_NAMES), each its own Prometheus counter
# mosxdp_core_NAME_total: what one counts does not add up with another's.
CORE_COUNTER_HELP = {
    "frames": "Frames the core took (TCP segments, other frames, fragments, malformed ones)",
    "tcp_segments": "TCP segments the core took",
    "non_tcp": "Frames that are not TCP (IP or not)",
    "ip_fragments": "IP fragments (passed on, not reassembled)",
    "flows_created": "Flows the core started tracking",
    "flows_ended": "Flows that ended (FIN, RST, timeout, end of input)",
    "flows_evicted": "Flows evicted to make room (max_concurrency)",
    "orphans": "TCP segments of no flow when they came (mid-stream pickups included)",
    "rst_ignored": "RSTs outside the receiver's window, ignored",
    "syn_payload_ignored": "SYNs whose payload was not delivered",
    "window_overruns": "Segments beyond the receiver's advertised window",
    "buffer_overruns": "Segments that did not fit the reassembly buffer",
    "dropped": "Frames a verdict of Python dropped",
    "bypassed_packets": "Frames of bypassed flows that still reached Python",
    "malformed": "Frames the core could not parse",
    "resized_frames": "Frames whose payload an app resized",
    "cut_frames": "Frames cut by a snap length, followed from their headers",
    "cut_bytes": "Payload bytes those cut frames miss (counted missed)",
    "cut_headers": "Frames cut inside their headers (also counted malformed)",
    "half_open_evicted": "Half-open flows evicted to make room",
    "half_open_timeouts": "Half-open flows ended by tcp_syn_timeout",
    "memcap_refused": "Buffers refused by reassembly_memcap",
    "refused_fragments": "Out-of-order fragments refused by max_fragments",
    "bad_tcp_options": "Segments with malformed TCP options",
    "urgent_data": "Segments with the URG flag (their data delivered in-stream)",
    "buffers_grown": "Reassembly buffers grown toward rmem_max",
}


def prometheus_text(status):
    """The counters in Prometheus' text exposition format. Names follow Prometheus'
    conventions: the mosxdp_ prefix, _total for counters, base units (_bytes), one metric
    per meaning (a label only splits one quantity: the reasons of a loss); docs/datapath.md
    lists them."""
    snap = status.snapshot()
    stack = status.stack
    lines = []

    def metric(name, help_text, kind, value):
        lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"))

    metric("mosxdp_frames_in_total", "Frames the monitor read from AF_XDP sockets", "counter",
           snap["frames_in"])
    metric("mosxdp_frames_out_total", "Frames the monitor transmitted", "counter",
           snap["frames_out"])
    metric("mosxdp_frames_dropped_total", "Frames dropped by verdicts in Python (not losses: "
           "see mosxdp_frames_lost_total)", "counter", snap["dropped"])
    lines += ["# HELP mosxdp_frames_lost_total Frames lost on their way to Python or out, by "
              "reason (docs/datapath.md, Loss)", "# TYPE mosxdp_frames_lost_total counter"]
    lines += [f'mosxdp_frames_lost_total{{reason="{k}"}} {v}' for k, v in snap["lost"].items()
              if k in REASONS]
    metric("mosxdp_kernel_frames_total", "Frames the XDP program saw", "counter",
           snap["kernel_rx"])
    metric("mosxdp_kernel_to_python_frames_total", "Frames the XDP program sent to Python",
           "counter", snap["kernel_to_python"])
    metric("mosxdp_flows_active", "Flows tracked in user space now", "gauge", snap["flows"])
    metric("mosxdp_callback_errors_total", "Exceptions raised by app callbacks", "counter",
           snap["callback_errors"])
    metric("mosxdp_reassembly_memory_bytes", "Bytes of reassembly buffers held now", "gauge",
           stack.reassembly_mem)
    metric("mosxdp_reassembly_memory_peak_bytes", "The most bytes of reassembly buffers held "
           "at once", "gauge", stack.reassembly_mem_peak)
    for name, value in stack.counters.items():
        if name == "callback_errors":
            continue        # mosxdp_callback_errors_total, above
        metric(f"mosxdp_core_{name}_total", CORE_COUNTER_HELP.get(name, f"The core's {name}"),
               "counter", value)
    lines += _sink_metrics(snap["sinks"])
    return "\n".join(lines) + "\n"


_SINK_METRICS = (
    ("mosxdp_sink_records_total", "counter", "Records written to a network sink", "records"),
    ("mosxdp_sink_records_delivered_total", "counter", "Records a network sink delivered",
     "delivered"),
    ("mosxdp_sink_records_dropped_total", "counter", "Records a network sink dropped: its queue "
     "was full (reason queue_full) or the server refused them (reason refused)", None),
    ("mosxdp_sink_queued_records", "gauge", "Records waiting in a network sink's queue", "queued"),
    ("mosxdp_sink_up", "gauge", "1 while a network sink is connected", "up"),
    ("mosxdp_sink_reconnects_total", "counter", "Reconnections of a network sink", "reconnects"))


def _sink_metrics(sinks) -> list[str]:
    """The network sinks' counters, labelled by sink (its spec, password hidden)."""
    if not sinks:
        return []
    lines = []
    for name, kind, help_text, key in _SINK_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in sinks:
            label = (s["sink"].replace("\\", "\\\\").replace('"', '\\"')
                     .replace("\n", "\\n"))
            if key is None:
                for reason, field in (("queue_full", "dropped"), ("refused", "refused")):
                    lines.append(f'{name}{{sink="{label}",reason="{reason}"}} {s[field]}')
            else:
                lines.append(f'{name}{{sink="{label}"}} {int(s[key])}')
    return lines


class MetricsServer:
    """Serves GET /metrics on a port, from a daemon thread, until closed.

    The port is bound when the object is made; the thread starts on entering, or with
    ``start_thread=False`` at :meth:`start` (after the capability drop: capabilities are
    per thread, and a thread started before it would keep them)."""

    def __init__(self, port, status, address="127.0.0.1", start_thread=True):
        import http.server     # here: a run without --metrics-port does not load it
        self.status = status
        self.start_thread = start_thread
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.rstrip("/") not in ("/metrics", ""):
                    self.send_error(404)
                    return
                body = prometheus_text(outer.status).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        try:
            self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics port {port}: cannot listen on {address}:{port}: "
                          f"{exc.strerror}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="mosxdp-metrics",
                                       daemon=True)

    def __enter__(self):
        if self.start_thread:
            self.start()
        return self

    def start(self):
        self.thread.start()

    def __exit__(self, *exc):
        if self.thread.ident is not None:  # shutdown() waits for serve_forever forever
            self.server.shutdown()
        self.server.server_close()
