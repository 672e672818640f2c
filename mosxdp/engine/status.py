"""Live feedback: a status line every second (--stats) and Prometheus metrics
(--metrics-port N) for a running monitor.

Both read counters the datapath keeps anyway (the engine's, the core's, the XDP
program's per-CPU counters); nothing is added to the per-frame path. The status
line is printed from the engine's loop (after a batch or an idle poll) at most
once a second; the metrics server answers from its own thread.
"""
import http.server
import sys
import threading
import time


class LiveStatus:
    """Snapshots of the live counters and the rates between two of them."""

    def __init__(self, engine, stack, interval=1.0, stream=None):
        self.engine = engine
        self.stack = stack
        self.interval = interval
        self.stream = stream or sys.stderr
        self._next = time.monotonic() + interval
        self._last = None

    def snapshot(self):
        engine = self.engine
        counters = engine.counters
        xdp = {}
        program = getattr(engine, "program", None)
        if program is not None and hasattr(program, "counters"):
            try:
                xdp = dict(program.counters())
            except OSError:
                xdp = {}
        out_frames = counters.get("forwarded", 0) + counters.get("outbox_sent", 0)
        return {
            "time": time.monotonic(),
            "frames_in": counters.get("frames", 0),
            "frames_out": out_frames,
            # Inline the engine counts every frame a verdict dropped, the core's among them;
            # passive it drops nothing on the wire: the core's verdicts.
            "dropped": counters.get("dropped", 0) if getattr(engine, "inline", False)
            else self.stack.counters.get("dropped", 0),
            "flows": self.stack.flow_count(),
            "kernel_rx": xdp.get("rx_total", 0),
            "kernel_to_python": xdp.get("to_xsk", 0),
            "callback_errors": self.stack.counters.get("callback_errors", 0),
        }

    def tick(self):
        """Print the status line when a second has passed since the last one."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        snap = self.snapshot()
        last, self._last = self._last, snap
        if last is None:
            return
        seconds = max(snap["time"] - last["time"], 1e-6)
        rate_in = (snap["frames_in"] - last["frames_in"]) / seconds
        rate_out = (snap["frames_out"] - last["frames_out"]) / seconds
        kernel = snap["kernel_rx"] - last["kernel_rx"]
        to_python = snap["kernel_to_python"] - last["kernel_to_python"]
        share = f"{100.0 * to_python / kernel:.1f}%" if kernel else "-"
        print(f"mosxdp: in {rate_in / 1e3:.1f} kpps, out {rate_out / 1e3:.1f} kpps, "
              f"kernel {kernel / seconds / 1e3:.1f} kpps ({share} to Python), "
              f"flows {snap['flows']}, drops {snap['dropped']}, "
              f"callback errors {snap['callback_errors']}", file=self.stream, flush=True)


def prometheus_text(status):
    """The counters in Prometheus' text exposition format."""
    snap = status.snapshot()
    lines = []
    for name, help_text, kind, value in (
            ("mosxdp_frames_in_total", "Frames the monitor read from AF_XDP sockets", "counter", snap["frames_in"]),
            ("mosxdp_frames_out_total", "Frames the monitor transmitted", "counter", snap["frames_out"]),
            ("mosxdp_frames_dropped_total", "Frames dropped by verdicts", "counter", snap["dropped"]),
            ("mosxdp_kernel_frames_total", "Frames the XDP program saw", "counter", snap["kernel_rx"]),
            ("mosxdp_kernel_to_python_total", "Frames the XDP program sent to Python", "counter",
             snap["kernel_to_python"]),
            ("mosxdp_flows", "Flows tracked in user space", "gauge", snap["flows"]),
            ("mosxdp_callback_errors_total", "Exceptions raised by app callbacks", "counter",
             snap["callback_errors"])):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    for name, value in sorted(status.stack.counters.items()):
        lines.append(f'mosxdp_core_events_total{{counter="{name}"}} {value}')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves GET /metrics on a port, from a daemon thread, until closed.

    The port is bound when the object is made; the thread starts on entering, or with
    ``start_thread=False`` at :meth:`start` (after the capability drop: capabilities are
    per thread, and a thread started before it would keep them)."""

    def __init__(self, port, status, address="127.0.0.1", start_thread=True):
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

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
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
