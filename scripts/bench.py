#!/usr/bin/env python3
"""Benchmarks: packets per second through the monitor, next to a baseline.

  scripts/bench.py --offline PCAP   core throughput with no app, connlog (state
                                    only) and flowdump (full reassembly), and the
                                    ratio to `tcpflow -r PCAP` on the same file.
  scripts/bench.py --live           the AF_XDP datapath on a veth testbed (root).

Figures are printed, never asserted: tests do not time anything.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _run_offline_once(pcap, app_name, app_argv, repeat):
    """Best wall time of `repeat` runs of one app over the whole file, in-process."""
    import argparse as _argparse

    from mosxdp import api
    from mosxdp.cli import load_app
    from mosxdp.core.stack import VERDICT_FORWARD  # noqa: F401  (same code path as the CLI)
    from mosxdp.engine import OfflineEngine
    from mosxdp.io.pcap import PcapReader

    with PcapReader(pcap) as reader:
        frames = [(ts, bytearray(frame)) for ts, frame in reader]
    best = None
    for _ in range(repeat):
        api.mtcp_init(None)
        mctx = api.mtcp_create_context(0)
        app = None
        module = None
        if app_name is not None:
            module = load_app(app_name)
            parser = _argparse.ArgumentParser()
            module.add_arguments(parser)
            app = module.setup(mctx, parser.parse_args(app_argv))
        source = [(ts, memoryview(bytearray(frame))) for ts, frame in frames]
        engine = OfflineEngine(mctx, source, None, batch_size=64)
        start = time.perf_counter()
        engine.run()
        elapsed = time.perf_counter() - start
        if module is not None and hasattr(module, "teardown"):
            module.teardown(app)
        api.mtcp_destroy()
        best = elapsed if best is None else min(best, elapsed)
    return len(frames), best


def bench_offline(pcap, repeat):
    workdir = tempfile.mkdtemp(prefix="mosxdp-bench-")
    try:
        rows = []
        count, no_app = _run_offline_once(pcap, None, [], repeat)
        rows.append(("no app (parse + flow table)", no_app))
        _, state = _run_offline_once(pcap, "connlog", ["--output", os.path.join(workdir, "conn.log")], repeat)
        rows.append(("connlog (state only)", state))
        _, full = _run_offline_once(pcap, "flowdump", ["--outdir", os.path.join(workdir, "flows")], repeat)
        rows.append(("flowdump (full reassembly)", full))
        tcpflow = None
        if shutil.which("tcpflow"):
            best = None
            for _ in range(repeat):
                out = os.path.join(workdir, "tcpflow")
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                subprocess.run(["tcpflow", "-r", pcap, "-o", out], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                elapsed = time.perf_counter() - start
                best = elapsed if best is None else min(best, elapsed)
            tcpflow = best
        print(f"offline benchmark: {pcap}: {count} frames, best of {repeat} runs, one core")
        print(f"{'configuration':<30} {'seconds':>9} {'kpps':>9} {'vs tcpflow wall':>16}")
        for name, seconds in rows:
            ratio = f"{seconds / tcpflow:.2f}x" if tcpflow else "n/a"
            print(f"{name:<30} {seconds:>9.3f} {count / seconds / 1e3:>9.1f} {ratio:>16}")
        if tcpflow:
            print(f"{'tcpflow -r (process wall time)':<30} {tcpflow:>9.3f} {count / tcpflow / 1e3:>9.1f} {'1.00x':>16}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", metavar="PCAP", help="benchmark the core on a pcap file")
    parser.add_argument("--live", action="store_true", help="benchmark the AF_XDP datapath (root)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (best is kept)")
    args, rest = parser.parse_known_args(argv)
    if not args.offline and not args.live:
        parser.error("give --offline PCAP and/or --live")
    if args.offline:
        bench_offline(args.offline, args.repeat)
    if args.live:
        import bench_live
        return bench_live.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
