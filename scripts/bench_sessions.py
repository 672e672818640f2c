"""HTTPS downloads through zeeklog, next to the XDP devmap baseline (`bench.py --sessions`).

The veth inline testbed of `bench.py --live` (endpoints' receive steered to CPU 0 by RPS,
the monitor pinned to CPU 1, GRO on the endpoints). The server is `mosxdp.demo.server
--tls` in the server namespace; the client runs COUNT `curl -k --http1.1` downloads of one
random file of MB MiB, PARALLEL at a time, each with its own SNI name (`--resolve`).

Rows, interleaved per round: the kernel baseline (an XDP devmap program, no socket) and
`mosxdp run zeeklog` (each TLS flow is handed to the kernel after its handshake). Per row:
throughput (all bodies over the wall time of the batch), its ratio to the baseline's
median, the monitor's CPU share during the downloads; median [min-max] over the rounds.

Every timed download is checked (sha256 of the file served), and after each zeeklog round
its ssl.log must name every SNI. One untimed round more, with GRO off and tcpdump at both
receivers (cli0, srv0), checks each download's conn.log line: packets and IP bytes per
direction equal what the receiving end saw. zeeklog runs with a 2 s TIME_WAIT
(`tcp_tw_interval = 2`), as Zeek keeps a connection after its close: the server's RST that
answers the client's last bytes after the close is the flow's (docs/subscriptions.md).
"""
import argparse
import concurrent.futures
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import bench

TLS_PORT = 8443
# Client ports: above the ephemeral range (32768-60999), a new block per batch of downloads
# (a client that closes first holds its port in TIME_WAIT for a minute).
BASE_PORT = 61000
_BATCHES = itertools.count()


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _names(count):
    return [f"s{i:02d}.bench.example" for i in range(count)]


def _downloads(tb, count, parallel, outdir, base):
    """Run the downloads, download i from client port base + i; (wall seconds, [curl
    return codes])."""
    def one(i):
        name = _names(count)[i]
        out = os.path.join(outdir, f"{i}.bin")
        r = tb.run("cli", bench._pin(0) + [
            "curl", "-sS", "-k", "--http1.1", "--fail", "--max-time", "300",
            "--resolve", f"{name}:{TLS_PORT}:{tb.srv_ip}", "--local-port", str(base + i),
            "-o", out, f"https://{name}:{TLS_PORT}/body"],
            capture_output=True, text=True, timeout=400)
        if r.returncode:
            print(f"  download {i} ({name}): curl {r.returncode}: {r.stderr.strip()}", file=sys.stderr)
        return r.returncode
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(one, range(count)))
    return time.monotonic() - started, codes


def _check_bodies(outdir, count, want):
    bad = [i for i in range(count)
           if not os.path.exists(p := os.path.join(outdir, f"{i}.bin")) or _sha256(p) != want]
    for i in range(count):
        try:
            os.unlink(os.path.join(outdir, f"{i}.bin"))
        except FileNotFoundError:
            pass
    return bad


def _zeek_lines(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _wire(pcap):
    """{(client port, 'c' client-to-server or 's'): [frames, IP bytes]} by tshark."""
    out = subprocess.run(["tshark", "-r", pcap, "-n", "-T", "fields", "-E", "separator=/t",
                          "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "ip.len"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    counts = {}
    for line in out.splitlines():
        sport, dport, iplen = line.split("\t")
        client = int(dport) == TLS_PORT
        c = counts.setdefault((int(sport) if client else int(dport), "c" if client else "s"), [0, 0])
        c[0] += 1
        c[1] += int(iplen)
    return counts


def _run_row(tb, row, args, workdir, flooder, want_sha, rnd, capture=False):
    label, argv, nsock = row
    argv = [a.replace("{tmp}", workdir).replace("{rnd}", str(rnd))
            .replace("{A}", tb.iface_a).replace("{B}", tb.iface_b) for a in argv]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    log = open(os.path.join(workdir, "monitor.log"), "a")
    before = [bench._prog_id(tb, ifn) for ifn in (tb.iface_a, tb.iface_b)]
    mon = tb.popen("mon", bench._pin(1) + argv, cwd=root, stdout=log, stderr=log)
    dumps = []
    try:
        if (not bench._xdp_ready(tb, nsock, time.monotonic() + 120, flooder, before)
                or mon.poll() is not None):
            raise RuntimeError(f"{label}: the monitor did not come up (see {log.name})")
        if capture:
            for ns, ifn in (("cli", tb.cli_if), ("srv", tb.srv_if)):
                pcap = os.path.join(workdir, f"{ifn}.pcap")
                p = tb.popen(ns, ["tcpdump", "-i", ifn, "-s", "128", "-B", "65536", "-n",
                                  "--immediate-mode", "-U", "-w", pcap,
                                  f"tcp port {TLS_PORT}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                dumps.append((p, pcap))
            time.sleep(1.0)
        ticks, started = bench._cpu_ticks(mon.pid), time.monotonic()
        base = BASE_PORT + next(_BATCHES) * args.count % (65536 - BASE_PORT - args.count)
        wall, codes = _downloads(tb, args.count, args.parallel, args.outdir, base)
        after, elapsed = bench._cpu_ticks(mon.pid), time.monotonic() - started
        res = {"wall": wall, "failed": sum(1 for c in codes if c), "base_port": base}
        res["gbps"] = args.count * args.mb * (1 << 20) * 8 / wall / 1e9
        if ticks is not None and after is not None:
            hz = os.sysconf("SC_CLK_TCK")
            res["cpu"] = 100.0 * ((after[0] - ticks[0]) + (after[1] - ticks[1])) / hz / elapsed
        res["bad_bodies"] = _check_bodies(args.outdir, args.count, want_sha)
        if mon.poll() is not None:
            raise RuntimeError(f"{label}: the monitor died during the run (see {log.name})")
        for p, _pcap in dumps:
            time.sleep(0.5)
            tb.stop(p, timeout=10)
            res.setdefault("tcpdump", []).append(p.stderr.read().strip().splitlines()[-1:])
        return res
    finally:
        for p, _pcap in dumps:
            if p.poll() is None:
                tb.stop(p)
        # zeeklog writes its open flows' lines at the end: give it the time it needs
        tb.stop(mon, timeout=30)
        log.close()


def _check_ssl(logdir, count):
    snis = {r.get("server_name") for r in _zeek_lines(os.path.join(logdir, "ssl.log"))}
    return sorted(set(_names(count)) - snis)


def _check_conn(logdir, workdir, count, base):
    """Mismatches between conn.log and the receivers' captures, one string each."""
    at_server, at_client = _wire(os.path.join(workdir, "srv0.pcap")), _wire(os.path.join(workdir, "cli0.pcap"))
    lines = {r["id.orig_p"]: r for r in _zeek_lines(os.path.join(logdir, "conn.log"))
             if r.get("id.resp_p") == TLS_PORT}
    problems = []
    for i in range(count):
        port = base + i
        line = lines.get(port)
        if line is None:
            problems.append(f"client port {port}: no conn.log line")
            continue
        seen = (line["orig_pkts"], line["orig_ip_bytes"], line["resp_pkts"], line["resp_ip_bytes"])
        wire = (*at_server.get((port, "c"), [0, 0]), *at_client.get((port, "s"), [0, 0]))
        if seen != wire:
            problems.append(f"client port {port}: conn.log pkts/ip_bytes {seen}, receivers {wire}")
    return problems


def _checked_row(tb, row, args, workdir, flooder, want_sha, rnd):
    """One timed row; after a zeeklog round, the SNI names its ssl.log misses."""
    res = _run_row(tb, row, args, workdir, flooder, want_sha, rnd)
    if res and row[2]:
        res["sni_missing"] = _check_ssl(os.path.join(workdir, f"zeek{rnd}"), args.count)
    return res


def _said(res, args):
    return (f"{res['gbps']:.2f} Gbps ({args.count} x {args.mb} MiB in {res['wall']:.2f} s), "
            f"monitor CPU {res.get('cpu', 0):.1f}%, failed {res['failed']}, bodies differing "
            f"{len(res['bad_bodies'])}"
            + (f", SNI missing {len(res['sni_missing'])}" if 'sni_missing' in res else ""))


def bench_sessions(argv, rounds=3):
    p = argparse.ArgumentParser(prog="bench.py --sessions", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=20, help="downloads per round (default 20)")
    p.add_argument("--mb", type=int, default=50, help="size of each download in MiB (default 50)")
    p.add_argument("--parallel", type=int, default=4, help="downloads at a time (default 4)")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py --sessions: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    for tool in ("curl", "openssl", "tcpdump", "tshark", "ethtool", "ip", "ss"):
        if shutil.which(tool) is None:
            print(f"bench.py --sessions: {tool} is not installed", file=sys.stderr)
            return 2
    if not (1 <= args.count <= 1000 and 1 <= args.parallel <= args.count and 1 <= args.mb <= 4096):
        p.error("--count 1..1000, --parallel 1..count, --mb 1..4096")
    from mosxdp.demo.passprog import attach_to_endpoints
    from mosxdp.demo.testbed import Testbed
    rows = [("XDP devmap, no socket (kernel baseline)",
             [sys.executable, "-c", bench._BASELINE_HOLDER, "{A}", "{B}"], 0),
            ("mosxdp run zeeklog (bypass after sessions)",
             [sys.executable, "-m", "mosxdp.cli", "run", "zeeklog", "--iface", "{A}", "--peer", "{B}",
              "--logdir", "{tmp}/zeek{rnd}", "--config", "{tmp}/zeek.toml"], 2)]
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    workdir = tempfile.mkdtemp(prefix="mosxdp-bench-sessions-")
    with open(os.path.join(workdir, "zeek.toml"), "w") as f:
        f.write("[mos]\ntcp_tw_interval = 2\n")
    www = tempfile.mkdtemp(prefix="mosxdp-bench-www-", dir=shm)
    args.outdir = tempfile.mkdtemp(prefix="mosxdp-bench-get-", dir=shm)
    results = {r[0]: [] for r in rows}
    checks = []
    load_before = bench._loadavg()
    try:
        flooder = os.path.join(workdir, "flood.py")
        with open(flooder, "w") as f:
            f.write(bench._FLOODER)
        body = os.path.join(www, "body")
        with open(body, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1 << 20))
        want_sha = _sha256(body)
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=bench.example", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=60)
        with Testbed("inline") as tb:
            for ns, ifn in (("cli", tb.cli_if), ("srv", tb.srv_if)):
                tb.run(ns, ["ethtool", "-K", ifn, "gro", "on"], check=True)
            bench._steer_endpoints(tb, True)
            srv = tb.popen("srv", bench._pin(0) + [sys.executable, "-m", "mosxdp.demo.server", www,
                                                   "8080", "--tls", str(TLS_PORT), "--cert", cert,
                                                   "--key", key],
                           cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tb.wait_listen("srv", TLS_PORT)
            for rnd in range(rounds):
                for row in rows:
                    bench.measured(results, rnd, row, lambda res: _said(res, args), _checked_row,
                                   tb, row, args, workdir, flooder, want_sha, rnd)
            # the untimed check of conn.log against the receivers: tcpdump sees what GRO
            # merged as one frame, so GRO off, and XDP_PASS programs on the endpoints (a veth
            # takes frames redirected to it only with GRO or an XDP program)
            for ns, ifn in (("cli", tb.cli_if), ("srv", tb.srv_if)):
                tb.run(ns, ["ethtool", "-K", ifn, "gro", "off"], check=True)
            attach_to_endpoints(tb, python=sys.executable)
            res = _run_row(tb, rows[1], args, workdir, flooder, want_sha, "check", capture=True)
            logdir = os.path.join(workdir, "zeekcheck")
            checks = _check_conn(logdir, workdir, args.count, res["base_port"])
            checks += [f"SNI not in ssl.log: {n}" for n in _check_ssl(logdir, args.count)]
            checks += [f"download {i}: body differs" for i in res["bad_bodies"]]
            print(f"  check round (GRO off, tcpdump at cli0 and srv0: {res.get('tcpdump')}): "
                  f"{args.count} downloads, {len(checks)} mismatches", flush=True)
            for line in checks:
                print(f"    {line}")
            tb.stop(srv)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(www, ignore_errors=True)
        shutil.rmtree(args.outdir, ignore_errors=True)
    load_after = bench._loadavg()

    def med(label, key):
        vals = [r[key] for r in results[label] if r and r.get(key) is not None]
        return (statistics.median(vals), min(vals), max(vals)) if vals else (None, None, None)

    base = med(rows[0][0], "gbps")[0]
    print(f"\nHTTPS sessions benchmark: veth inline testbed, {rounds} rounds of {args.count} "
          f"downloads of {args.mb} MiB, {args.parallel} at a time; median [min-max]; ratio = median / "
          f"baseline median; endpoints with GRO, their receive steered to CPU 0 by RPS; server and "
          f"curl on CPU 0; monitor pinned to CPU 1; 1-minute load {load_before} before, "
          f"{load_after} after ({os.cpu_count()} CPUs)")
    print(f"{'configuration':<44} {'HTTPS Gbps':>24} {'monitor CPU %':>20} {'failed':>7} {'bodies differing':>17}")
    for label, _argv, _n in rows:
        m, lo, hi = med(label, "gbps")
        cpu = med(label, "cpu")
        failed = sum(r["failed"] for r in results[label] if r)
        bad = sum(len(r["bad_bodies"]) for r in results[label] if r)
        gbps = f"{m:.2f} [{lo:.2f}-{hi:.2f}] {m / base:.2f}x" if m is not None and base else "-"
        cpus = f"{cpu[0]:.1f} [{cpu[1]:.1f}-{cpu[2]:.1f}]" if cpu[0] is not None else "-"
        print(f"{label:<44} {gbps:>24} {cpus:>20} {failed:>7} {bad:>17}")
    missing = sum(len(r.get("sni_missing", [])) for r in results[rows[1][0]] if r)
    print(f"zeeklog ssl.log: {missing} SNI names missing over the timed rounds; conn.log vs the "
          f"receivers' captures: {len(checks)} mismatches over {args.count} downloads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "count": args.count, "mb": args.mb, "parallel": args.parallel,
                       "load1_before": load_before, "load1_after": load_after,
                       "rows": [{"label": r[0], "rounds": results[r[0]]} for r in rows],
                       "check_mismatches": checks}, f, indent=1)
    return 0 if not checks else 1
