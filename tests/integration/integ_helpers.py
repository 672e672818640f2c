"""Helpers of the integration tests: run mosxdp's CLI, tcpflow and tshark on a
pcap and bring their outputs to one shape.

Every reference run is a subprocess; they are started on a thread pool and
cached per (tool, pcap, options), so a whole test module waits only for the
slowest of them.  Stream sets are dicts {tcpflow-style file name: bytes}.
"""
import atexit
import ipaddress
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
APPS = Path(__file__).resolve().parent / "apps"
TIMEOUT = 120

_TMP = Path(tempfile.mkdtemp(prefix="mosxdp-integration-"))
atexit.register(shutil.rmtree, _TMP, True)
_POOL = ThreadPoolExecutor(max_workers=max(4, min(12, (os.cpu_count() or 2) * 2)))
_FUTURES = {}
_LOCK = threading.Lock()
_COUNTER = iter(range(10 ** 9))

# tcpflow 1.6 writes these next to the stream files.
_TCPFLOW_EXTRA = {"report.xml", "alerts.txt"}


def tmpdir(tag):
    with _LOCK:
        number = next(_COUNTER)
    path = _TMP / f"{tag}-{number}"
    path.mkdir()
    return path


def cached(key, fn, *args):
    """Submit fn(*args) once per key; return its Future."""
    with _LOCK:
        future = _FUTURES.get(key)
        if future is None:
            future = _FUTURES[key] = _POOL.submit(fn, *args)
    return future


def mosxdp_command():
    script = Path(sys.executable).with_name("mosxdp")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mosxdp.cli"]


def run_mosxdp(*args, timeout=TIMEOUT):
    """The CLI in a subprocess, as a user runs it: CompletedProcess (text)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(mosxdp_command() + [str(a) for a in args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=env)


def _run(cmd):
    if shutil.which(str(cmd[0])) is None:
        raise AssertionError(f"{cmd[0]} is not installed: run scripts/setup.sh")
    return subprocess.run([str(c) for c in cmd], capture_output=True, check=True,
                          timeout=TIMEOUT)


def config_file(**mos_keys):
    """A TOML file with these [mos] keys (cached by content)."""
    lines = ["[mos]"]
    for key, value in sorted(mos_keys.items()):
        text = ("true" if value else "false") if isinstance(value, bool) else \
            f'"{value}"' if isinstance(value, str) else str(value)
        lines.append(f"{key} = {text}")
    body = "\n".join(lines) + "\n"
    path = _TMP / ("config-" + "-".join(f"{k}_{v}" for k, v in sorted(mos_keys.items())) + ".toml")
    if not path.exists():
        path.write_text(body)
    return path


def read_streams(directory):
    """{file name: bytes} of a flowdump or tcpflow output directory."""
    streams = {}
    for entry in sorted(Path(directory).iterdir()):
        if entry.is_file() and entry.name not in _TCPFLOW_EXTRA:
            streams[entry.name] = entry.read_bytes()
    return streams


# ------------------------------------------------------------------ mosxdp
# flowdump's line at exit when its files miss bytes (holes: lost.pcap, holes.pcap), checked
# by test_references.test_flowdump_says_how_many_bytes_its_files_miss.
FLOWDUMP_MISSED = re.compile(r"flowdump: \d+ stream bytes the monitor never saw \(holes in the "
                             r"capture, or payload its snap length cut\) are zeros in the "
                             r"files, or absent from their ends\n")


def _run_app(app, pcap, config, *args, allowed=None):
    """`mosxdp run APP --pcap PCAP ARGS [--config CONFIG]`, which must succeed silently
    (but for a stderr that ``allowed``, a compiled pattern, matches whole)."""
    if config is not None:
        args += ("--config", config)
    proc = run_mosxdp("run", app, "--pcap", pcap, *args)
    quiet = not proc.stderr or (allowed is not None and allowed.fullmatch(proc.stderr))
    if proc.returncode != 0 or not quiet:
        raise AssertionError(f"mosxdp {app} {pcap} failed ({proc.returncode}): {proc.stderr}")


def _flowdump(pcap, config, args):
    outdir = tmpdir("flowdump")
    _run_app("flowdump", pcap, config, "--outdir", outdir, *args, allowed=FLOWDUMP_MISSED)
    return read_streams(outdir)


def flowdump(pcap, args=(), **mos_keys):
    """flowdump's streams for a pcap, with optional app options and [mos] configuration keys."""
    config = config_file(**mos_keys) if mos_keys else None
    return cached(("flowdump", str(pcap), config, tuple(args)), _flowdump, pcap, config, args)


def _json_log(app, name, pcap, config, args):
    """The records (dicts) of a log app that writes JSON lines to --output."""
    import json
    output = tmpdir(app) / name
    _run_app(app, pcap, config, "--output", output, *args)
    return [json.loads(line) for line in output.read_text().splitlines()]


def connlog(pcap, args=(), **mos_keys):
    config = config_file(**mos_keys) if mos_keys else None
    return cached(("connlog", str(pcap), config, tuple(args)), _json_log, "connlog", "conn.json",
                  pcap, config, args)


def eve(pcap, args=()):
    """The eve app's records (dicts) for a pcap, with optional app options."""
    return cached(("eve", str(pcap), tuple(args)), _json_log, "eve", "eve.json", pcap, None,
                  args)


# ----------------------------------------------------------------- tcpflow
def _tcpflow(pcap):
    outdir = tmpdir("tcpflow")
    if shutil.which("tcpflow") is None:
        raise AssertionError("tcpflow is not installed: run scripts/setup.sh")
    # tcpflow exits 1 on a truncated file, after writing what it read.
    proc = subprocess.run(["tcpflow", "-r", str(pcap), "-o", str(outdir)], capture_output=True,
                          timeout=TIMEOUT)
    if proc.returncode not in (0, 1) or not (outdir / "report.xml").exists():
        raise AssertionError(f"tcpflow -r {pcap} failed ({proc.returncode}): {proc.stderr!r}")
    return read_streams(outdir)


def tcpflow(pcap):
    return cached(("tcpflow", str(pcap)), _tcpflow, pcap)


# ------------------------------------------------------------------ tshark
def tcpflow_endpoint(addr, port):
    """An endpoint as tcpflow names it: IPv4 octets and the port zero padded."""
    ip = ipaddress.ip_address(addr)
    host = ".".join(f"{int(o):03d}" for o in str(ip).split(".")) if ip.version == 4 else str(ip)
    return f"{host}.{int(port):05d}"


def split_endpoint(text):
    """'10.0.0.1:80' or '[fd00::1]:80' or 'fd00::1:80' -> (address, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def tcp_streams(pcap):
    """tshark's tcp.stream indexes of a pcap, sorted."""
    out = _run(["tshark", "-r", pcap, "-Y", "tcp", "-T", "fields", "-e", "tcp.stream"]).stdout
    return sorted({int(x) for x in out.split()})


_FOLLOW_BLOCK = re.compile(
    rb"Filter: tcp\.stream eq (\d+)\nNode 0: (\S+)\nNode 1: (\S+)\n(.*?)\n?={10,}", re.S)


def _tshark_follow(pcap):
    """[(stream, node0, node1, bytes node0->node1, bytes node1->node0)] by stream index.

    `-z follow,tcp,raw,N` prints one hex line per chunk, in capture order:
    unindented when node 0 sent it, indented with a tab when node 1 did."""
    indexes = tcp_streams(pcap)
    cmd = ["tshark", "-r", pcap, "-q"]
    for index in indexes:
        cmd += ["-z", f"follow,tcp,raw,{index}"]
    out = _run(cmd).stdout
    result = {}
    for match in _FOLLOW_BLOCK.finditer(out):
        index = int(match.group(1))
        node0 = split_endpoint(match.group(2).decode())
        node1 = split_endpoint(match.group(3).decode())
        data = [bytearray(), bytearray()]
        for line in match.group(4).split(b"\n"):
            if not line.strip():
                continue
            data[1 if line.startswith(b"\t") else 0] += bytes.fromhex(line.strip().decode())
        result[index] = (index, node0, node1, bytes(data[0]), bytes(data[1]))
    assert sorted(result) == indexes, f"tshark follow gave streams {sorted(result)}, expected {indexes}"
    return [result[i] for i in indexes]


def tshark_follow(pcap):
    return cached(("follow", str(pcap)), _tshark_follow, pcap)


def tshark_streams(pcap):
    """tshark's follow output mapped to tcpflow's file names.

    A stream's two directions are named SRC-DST; the k-th connection (k >= 1,
    in tcp.stream order, which is the order of the connections' first packets)
    on the same 4-tuple gets tcpflow's suffix `ck`.  Empty directions have no
    file (neither tcpflow nor flowdump creates one)."""
    seen = {}
    streams = {}
    for _index, node0, node1, data0, data1 in tshark_follow(pcap).result():
        tuple_key = frozenset((node0, node1))
        count = seen.get(tuple_key, 0)
        seen[tuple_key] = count + 1
        suffix = f"c{count}" if count else ""
        a, b = tcpflow_endpoint(*node0), tcpflow_endpoint(*node1)
        if data0:
            streams[f"{a}-{b}{suffix}"] = data0
        if data1:
            streams[f"{b}-{a}{suffix}"] = data1
    return streams


_CONV_LINE = re.compile(
    r"^(\S+)\s+<->\s+(\S+)\s+(\d+)\s+(\d+)\s+(bytes|kB|MB|GB)\s+(\d+)\s+(\d+)\s+(bytes|kB|MB|GB)"
    r"\s+(\d+)\s+(\d+)\s+(bytes|kB|MB|GB)\s+([\d.]+)\s+([\d.]+)\s*$")


def _tshark_conv(pcap):
    """Rows of `tshark -q -z conv,tcp`: dicts with a, b (endpoints), frames_to_a,
    bytes_to_a, frames_to_b, bytes_to_b (bytes as (value, unit)), rel_start."""
    out = _run(["tshark", "-r", pcap, "-q", "-z", "conv,tcp"]).stdout.decode()
    rows = []
    for line in out.splitlines():
        match = _CONV_LINE.match(line)
        if match:
            g = match.groups()
            rows.append({
                "a": split_endpoint(g[0]), "b": split_endpoint(g[1]),
                "frames_to_a": int(g[2]), "bytes_to_a": (int(g[3]), g[4]),
                "frames_to_b": int(g[5]), "bytes_to_b": (int(g[6]), g[7]),
                "rel_start": float(g[11]),
            })
    return rows


def tshark_conv(pcap):
    return cached(("conv", str(pcap)), _tshark_conv, pcap)


def _tshark_frames(pcap):
    """Per TCP frame: (tcp.stream, src addr, src port, frame.len, ip bytes, vlan present)."""
    out = _run(["tshark", "-r", pcap, "-Y", "tcp", "-T", "fields", "-E", "separator=/t",
                "-e", "tcp.stream", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport",
                "-e", "frame.len", "-e", "ip.len", "-e", "ipv6.plen", "-e", "vlan.id",
                "-e", "frame.protocols"]).stdout.decode()
    frames = []
    for line in out.splitlines():
        stream, ip4, ip6, sport, flen, ip_len, plen, vlan, protocols = line.split("\t")
        ip_bytes = int(ip_len) if ip4 else int(plen) + 40
        frames.append((int(stream), ip4 or ip6, int(sport), int(flen), ip_bytes,
                       bool(vlan) or "vlan" in protocols.split(":")))
    return frames


def tshark_frames(pcap):
    return cached(("frames", str(pcap)), _tshark_frames, pcap)


def _tshark_flags(pcap):
    """({(tcp.stream, src addr, src port): the TCP flags of its frames OR-ed},
    {tcp.stream: frame.number of its last frame})."""
    out = _run(["tshark", "-r", pcap, "-Y", "tcp", "-T", "fields", "-E", "separator=/t",
                "-e", "frame.number", "-e", "tcp.stream", "-e", "ip.src", "-e", "ipv6.src",
                "-e", "tcp.srcport", "-e", "tcp.flags"]).stdout.decode()
    flags, last = {}, {}
    for line in out.splitlines():
        number, stream, ip4, ip6, sport, bits = line.split("\t")
        key = (int(stream), ip4 or ip6, int(sport))
        flags[key] = flags.get(key, 0) | int(bits, 16)
        last[int(stream)] = int(number)
    return flags, last


def tshark_flags(pcap):
    return cached(("flags", str(pcap)), _tshark_flags, pcap)


def _tshark_first_fins(pcap):
    """{tcp.stream: (src addr, src port)} of each stream's first FIN."""
    out = _run(["tshark", "-r", pcap, "-Y", "tcp.flags.fin == 1", "-T", "fields",
                "-e", "tcp.stream", "-e", "ip.src", "-e", "ipv6.src",
                "-e", "tcp.srcport"]).stdout.decode()
    first = {}
    for line in out.splitlines():
        stream, ip4, ip6, sport = line.split("\t")
        first.setdefault(int(stream), (ip4 or ip6, int(sport)))
    return first


def tshark_first_fins(pcap):
    return cached(("fins", str(pcap)), _tshark_first_fins, pcap)


# --------------------------------------------------------------- pcap files
def read_pcap(path):
    """(linktype, [(ts_sec, ts_usec, frame bytes)]) of a classic little-endian
    microsecond pcap: an independent reader, so the test does not check
    mosxdp's writer with mosxdp's reader."""
    data = Path(path).read_bytes()
    magic, _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B2C3D4, f"{path}: magic {magic:#x}"
    records, offset = [], 24
    while offset < len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, offset)
        offset += 16
        records.append((sec, usec, data[offset:offset + incl]))
        offset += incl
    assert offset == len(data), f"{path}: trailing bytes"
    return linktype, records


def write_pcap(path, records, linktype=1):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for sec, usec, frame in records:
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)
