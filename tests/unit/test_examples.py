"""The example apps in examples/ (the tutorial's httplog, its facade twin, httpblock, and the
README's example app), run offline through the CLI (`mosxdp run ./examples/X.py --pcap IN`)
in this process on the captures in tests/data, their output checked against what the
captures really hold (read independently with scapy)."""
import ast
import json
import os
import re

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from flowcraft import Conv, checksums_ok
from mosxdp import cli
from mosxdp.io.pcap import PcapReader, PcapWriter

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DATA = os.path.join(ROOT, "tests", "data")
EXAMPLES = os.path.join(ROOT, "examples")
DOCS = os.path.join(ROOT, "docs")


def example(name):
    return os.path.join(EXAMPLES, name)


def run(capsys, app, *args):
    """`mosxdp run APP ARGS...` in this process: (exit code, stdout lines, stderr). A callback
    that raises stops the run, so an example's bug fails the test."""
    code = cli.main(["run", app, "--on-callback-error", "stop", *map(str, args)])
    out, err = capsys.readouterr()
    return code, [line for line in out.splitlines() if line.strip()], err


def read_frames(path):
    with PcapReader(str(path)) as reader:
        return [(ts, bytes(frame)) for ts, frame in reader]


def write_frames(path, frames):
    with PcapWriter(str(path)) as writer:
        for ts, frame in frames:
            writer.write(ts, frame)
    return str(path)


def endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def http_lines(path):
    """{(client, server): {"request": first request line, "status": first status code}} from
    the capture's TCP payloads, per connection (scapy, not mosxdp)."""
    found = {}
    for _, frame in read_frames(path):
        pkt = Ether(frame)
        if TCP not in pkt or Raw not in pkt:
            continue
        ip = pkt[IP] if IP in pkt else pkt[IPv6]
        tcp, data = pkt[TCP], bytes(pkt[Raw])
        first = data.split(b"\r\n", 1)[0].decode("latin-1")
        if re.match(r"^[A-Z]+ \S+ HTTP/1\.[01]$", first):
            key = (endpoint(ip.src, tcp.sport), endpoint(ip.dst, tcp.dport))
            found.setdefault(key, {}).setdefault("request", first)
        elif first.startswith("HTTP/1."):
            key = (endpoint(ip.dst, tcp.dport), endpoint(ip.src, tcp.sport))
            found.setdefault(key, {}).setdefault("status", int(first.split()[1]))
    return found


# ---------------------------------------------------------------------- httplog
@pytest.mark.parametrize("capture,connections", [("http_sizes.pcap", 4), ("ipv6.pcap", 2),
                                                 ("concurrent.pcap", 8), ("upload.pcap", 2)])
def test_httplog_logs_each_request_and_status(capsys, capture, connections):
    pcap = os.path.join(DATA, capture)
    code, lines, err = run(capsys, example("httplog.py"), "--pcap", pcap)
    assert code == 0, err
    records = [json.loads(line) for line in lines]
    truth = http_lines(pcap)
    assert len(records) == len(truth) == connections
    assert {(r["client"], r["server"]): {"request": r["request"], "status": r["status"]}
            for r in records} == truth
    assert all(r["status"] == 200 for r in records)
    assert all("server_state" not in r for r in records)     # every exchange completed


def test_httplog_real_values(capsys):
    """The lines themselves, as they are in the captures (see tests/data/README.md)."""
    code, lines, _ = run(capsys, example("httplog.py"), "--pcap", os.path.join(DATA, "http_sizes.pcap"))
    records = [json.loads(line) for line in lines]
    assert [r["request"] for r in records] == [
        "GET /empty.bin HTTP/1.1", "GET /1k.bin HTTP/1.1", "GET /100k.bin HTTP/1.1",
        "GET /1m.bin HTTP/1.1"]
    assert {r["server"] for r in records} == {"10.77.0.2:8080"}
    code, lines, _ = run(capsys, example("httplog.py"), "--pcap", os.path.join(DATA, "ipv6.pcap"))
    records = [json.loads(line) for line in lines]
    assert [r["request"] for r in records] == ["GET /1k.bin HTTP/1.1", "GET /100k.bin HTTP/1.1"]
    assert all(r["client"].startswith("[fd77::1]:") and r["server"] == "[fd77::2]:8080"
               and r["status"] == 200 for r in records)


def test_httplog_filter_and_incomplete_exchange(capsys):
    refused = os.path.join(DATA, "refused.pcap")          # curl to port 81: SYN, RST/ACK
    code, lines, _ = run(capsys, example("httplog.py"), "--pcap", refused)
    assert code == 0 and lines == []                       # the default filter: ports 80, 8080
    code, lines, _ = run(capsys, example("httplog.py"), "--pcap", refused, "--filter", "tcp port 81")
    [record] = [json.loads(line) for line in lines]
    assert record["server"] == "10.77.0.2:81"
    assert (record["request"], record["status"]) == (None, None)
    assert record["server_state"] == "TCP_CLOSED"          # logged at CONN_END
    code, lines, _ = run(capsys, example("httplog.py"), "--pcap", os.path.join(DATA, "rst_abort.pcap"))
    [record] = [json.loads(line) for line in lines]
    assert (record["request"], record["status"]) == ("GET /1m.bin HTTP/1.0", 200)


def test_httplog_lines_split_across_segments(tmp_path, capsys):
    """The request and status lines arrive in pieces, one out of order: the app reads the
    reassembled streams, so it logs them whole."""
    conv = Conv(sport=80)
    conv.handshake()
    conv.data("c", b"GE")
    conv.data("c", b"T /split")
    conv.data("c", b"/path HTTP/1.1\r\nHost: x\r\n\r\n")
    conv.data("s", b"HTTP/1.1 4")
    tail = conv.data("s", b"04 Not Found\r\n\r\n", emit=False)    # arrives after the next one
    conv.data("s", b"body")
    conv.emit(tail)
    conv.close()
    pcap = write_frames(tmp_path / "split.pcap", conv.frames)
    code, lines, _ = run(capsys, example("httplog.py"), "--pcap", pcap, "--batch-size", 1)
    assert code == 0
    assert [json.loads(line) for line in lines] == [
        {"client": "10.0.0.1:40000", "server": "10.0.0.2:80", "request": "GET /split/path HTTP/1.1",
         "status": 404}]


def test_httplog_facade_twin_gives_the_same_output(capsys):
    for capture in ("http_sizes.pcap", "ipv6.pcap", "concurrent.pcap", "refused.pcap"):
        pcap = os.path.join(DATA, capture)
        outputs = []
        for app in ("httplog.py", "httplog_facade.py"):
            code, lines, _ = run(capsys, example(app), "--pcap", pcap, "--filter", "tcp")
            assert code == 0
            outputs.append(lines)
        assert outputs[0] == outputs[1] and outputs[0], capture


# --------------------------------------------------------------------- httpblock
def test_httpblock_drops_the_request_resets_and_counts(tmp_path, capsys):
    pcap = os.path.join(DATA, "http_sizes.pcap")
    out = tmp_path / "out.pcap"
    code, lines, _ = run(capsys, example("httpblock.py"), "--pcap", pcap, "--block", "/1m",
                         "--interval", "0.1", "--write", out)
    assert code == 0
    records = [json.loads(line) for line in lines]
    blocked = [r for r in records if "client" in r]
    ticks = [r for r in records if "ts" in r]
    truth = http_lines(pcap)
    [(client, server)] = [key for key, v in truth.items() if v["request"].startswith("GET /1m")]
    assert [(r["blocked"], endpoint(r["client"], r["client_port"]),
             endpoint(r["server"], r["server_port"])) for r in blocked] == [("/1m.bin", client, server)]
    # Timer lines in packet time, increasing, the last with every request counted.
    assert ticks and [t["ts"] for t in ticks] == sorted(t["ts"] for t in ticks)
    assert (ticks[-1]["requests"], ticks[-1]["blocked"]) == (4, 1)
    assert records[-1] == {"final": True, "requests": 4, "blocked": 1}   # teardown
    frames_in, frames_out = read_frames(pcap), read_frames(out)
    assert len(frames_out) == len(frames_in) - 1 + 2       # the request out, two RSTs in
    requests = [bytes(Ether(f)[Raw]).split(b"\r\n")[0] for _, f in frames_out
                if Raw in Ether(f) and bytes(Ether(f)[Raw]).startswith(b"GET ")]
    assert requests == [b"GET /empty.bin HTTP/1.1", b"GET /1k.bin HTTP/1.1", b"GET /100k.bin HTTP/1.1"]
    cport = int(client.rsplit(":", 1)[1])
    resets = [Ether(f) for _, f in frames_out if TCP in Ether(f) and Ether(f)[TCP].flags & 0x04
              and cport in (Ether(f)[TCP].sport, Ether(f)[TCP].dport)]
    assert sorted((p[TCP].sport, p[TCP].dport) for p in resets) == sorted([(cport, 8080), (8080, cport)])
    assert all(checksums_ok(bytes(p)) for p in resets)


# ------------------------------------------------------------------- README app
def readme_block():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    match = re.search(r"^## A monitor app\n.*?^```python\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no python block under '## A monitor app'"
    return match.group(1)


def test_readme_app_is_the_readme_block():
    with open(example("readme_app.py")) as f:
        assert f.read() == readme_block(), \
            "examples/readme_app.py and README.md's example app must be identical"


def port80(path, tmp_path):
    """The capture with port 8080 rewritten to 80 (the README app's filter), checksums redone."""
    frames = []
    for ts, frame in read_frames(path):
        pkt = Ether(frame)
        if TCP in pkt:
            for field in ("sport", "dport"):
                if getattr(pkt[TCP], field) == 8080:
                    setattr(pkt[TCP], field, 80)
            del pkt[TCP].chksum
            frame = bytes(pkt)
        frames.append((ts, frame))
    return write_frames(tmp_path / ("80-" + os.path.basename(path)), frames)


def stream_sizes(path):
    """{(client port, "client"|"server"): payload bytes sent} from the capture (no
    retransmissions in http_sizes.pcap: every payload byte is new)."""
    sizes = {}
    for _, frame in read_frames(path):
        pkt = Ether(frame)
        if TCP in pkt and Raw in pkt:
            tcp = pkt[TCP]
            key = (tcp.sport, "client") if tcp.dport == 80 else (tcp.dport, "server")
            sizes[key] = sizes.get(key, 0) + len(pkt[Raw])
    return sizes


def test_readme_app_runs(tmp_path, capsys):
    # Its filter is "tcp port 80": the captures' port 8080 flows are not monitored.
    code, lines, _ = run(capsys, example("readme_app.py"), "--pcap", os.path.join(DATA, "http_sizes.pcap"))
    assert code == 0 and lines == []
    pcap = port80(os.path.join(DATA, "http_sizes.pcap"), tmp_path)
    # One frame per batch: each MOS_ON_CONN_NEW_DATA brings at most one segment (< 4096 bytes),
    # so the app's single 4096-byte mtcp_peek reads every new byte.
    code, lines, _ = run(capsys, example("readme_app.py"), "--pcap", pcap, "--batch-size", 1)
    assert code == 0
    data = [re.fullmatch(r"10\.77\.0\.1:(\d+) -> 10\.77\.0\.2:80: (\d+) new bytes from the (client|server)",
                         line) for line in lines if "new bytes" in line]
    assert all(data)
    seen = {}
    for m in data:
        key = (int(m.group(1)), m.group(3))
        seen[key] = seen.get(key, 0) + int(m.group(2))
    assert seen == stream_sizes(pcap)
    assert len({port for port, _ in seen}) == 4
    states = [line for line in lines if "new bytes" not in line]
    assert all(re.fullmatch(r"side [01] is now TCP_[A-Z_0-9]+", line) for line in states)
    # At MOS_HK_RCV the side is the receiver: the server side reaches SYN_RCVD on each SYN.
    assert states.count("side 1 is now TCP_SYN_RCVD") == 4
    assert states.count("side 0 is now TCP_ESTABLISHED") == 4


# ------------------------------------------------------------------ all examples
def test_examples_use_only_the_public_api():
    for name in sorted(os.listdir(EXAMPLES)):
        if not name.endswith(".py"):
            continue
        with open(example(name)) as f:
            tree = ast.parse(f.read(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mosxdp"):
                assert node.module == "mosxdp", f"{name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("mosxdp.") for a in node.names), name
            if isinstance(node, ast.Attribute) and node.attr in ("stack", "engine", "config"):
                raise AssertionError(f"{name} reaches into mctx.{node.attr}")


def doc_python_blocks():
    """(doc name, code) of every ```python block of docs/*.md."""
    for doc in sorted(os.listdir(DOCS)):
        if not doc.endswith(".md"):
            continue
        with open(os.path.join(DOCS, doc)) as f:
            text = f.read()
        for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M):
            yield doc, block


def test_tutorial_excerpts_are_in_the_example_files():
    """A ```python block of docs/*.md whose first line is `# examples/NAME.py` is an excerpt of
    that file, verbatim: the docs cannot drift from the code the tests run."""
    checked = 0
    for doc, block in doc_python_blocks():
        first, _, body = block.partition("\n")
        m = re.fullmatch(r"# (examples/[\w.]+\.py)(?: \(excerpt\))?", first.strip())
        if not m:
            continue
        with open(os.path.join(ROOT, m.group(1))) as f:
            source = f.read()
        assert body in source, f"{doc}: a block of {m.group(1)} is not in the file:\n{body}"
        checked += 1
    assert checked >= 5


# ------------------------------------------------------- flowbytes (docs/porting.md)
FLOWBYTES_LINE = re.compile(r"10\.77\.0\.1:(\d+) -> 10\.77\.0\.2:8080: client sent (\d+), "
                            r"server sent (\d+), server ([A-Z_0-9]+)")


def port8080_sizes(path):
    """{client port: (bytes the client sent, bytes the server sent)} from the capture."""
    sizes = {}
    for _, frame in read_frames(path):
        pkt = Ether(frame)
        if TCP in pkt and Raw in pkt:
            tcp = pkt[TCP]
            port, index = (tcp.sport, 0) if tcp.dport == 8080 else (tcp.dport, 1)
            sent = sizes.setdefault(port, [0, 0])
            sent[index] += len(pkt[Raw])
    return {port: tuple(sent) for port, sent in sizes.items()}


def check_flowbytes(lines, pcap):
    flows = [FLOWBYTES_LINE.fullmatch(line) for line in lines if "->" in line]
    assert all(flows) and len(flows) == 4
    assert {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in flows} == port8080_sizes(pcap)
    assert {m.group(4) for m in flows} <= {"CLOSED", "TIME_WAIT"}
    ticks = [line for line in lines if "->" not in line]
    assert ticks and all(re.fullmatch(r"\d+ active flows", line) for line in ticks)


def test_flowbytes_counts_each_direction(capsys):
    pcap = os.path.join(DATA, "http_sizes.pcap")
    code, lines, _ = run(capsys, example("flowbytes.py"), "--pcap", pcap)
    assert code == 0
    check_flowbytes(lines, pcap)
    # AF_INET, as the C original (mOS is IPv4 only): the IPv6 capture gives no flow.
    code, lines, _ = run(capsys, example("flowbytes.py"), "--pcap", os.path.join(DATA, "ipv6.pcap"))
    assert code == 0 and lines == ["0 active flows"]


def test_flowbytes_standalone_main(capsys):
    """The C-style main(): mtcp_init, mtcp_create_context, setup, mtcp_app_join, mtcp_destroy."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("flowbytes_main", example("flowbytes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pcap = os.path.join(DATA, "http_sizes.pcap")
    assert module.main(["flowbytes", pcap]) == 0
    out, _ = capsys.readouterr()
    check_flowbytes([line for line in out.splitlines() if line.strip()], pcap)
    assert module.main(["flowbytes", os.path.join(DATA, "missing.pcap")]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("flowbytes: ") and "missing.pcap" in err and "\n" == err[-1]


# --------------------------------------------------- eventtrace (docs/tutorial.md)
def test_eventtrace_order_of_one_connection(capsys):
    code, lines, _ = run(capsys, example("eventtrace.py"), "--pcap", os.path.join(DATA, "http_sizes.pcap"),
                         "--filter", "tcp port 37762", "--batch-size", 1)
    assert code == 0
    rows = [line.split()[2:6] for line in lines]      # event, hook, side, state
    assert rows[:9] == [
        ["MOS_ON_PKT_IN", "MOS_HK_SND", "CLI", "TCP_SYN_SENT"],
        ["MOS_ON_CONN_START", "MOS_HK_SND", "CLI", "TCP_SYN_SENT"],
        ["MOS_ON_TCP_STATE_CHANGE", "MOS_HK_SND", "CLI", "TCP_SYN_SENT"],
        ["MOS_ON_PKT_IN", "MOS_HK_RCV", "SVR", "TCP_SYN_RCVD"],
        ["MOS_ON_CONN_START", "MOS_HK_RCV", "SVR", "TCP_SYN_RCVD"],
        ["MOS_ON_TCP_STATE_CHANGE", "MOS_HK_RCV", "SVR", "TCP_SYN_RCVD"],
        ["MOS_ON_PKT_IN", "MOS_HK_SND", "SVR", "TCP_SYN_RCVD"],
        ["MOS_ON_PKT_IN", "MOS_HK_RCV", "CLI", "TCP_ESTABLISHED"],
        ["MOS_ON_TCP_STATE_CHANGE", "MOS_HK_RCV", "CLI", "TCP_ESTABLISHED"],
    ]
    # The request: PKT_IN at both hooks, then CONN_NEW_DATA for the server's buffer.
    request = next(i for i, line in enumerate(lines) if line.endswith("PA len 87"))
    assert rows[request:request + 3] == [
        ["MOS_ON_PKT_IN", "MOS_HK_SND", "CLI", "TCP_ESTABLISHED"],
        ["MOS_ON_PKT_IN", "MOS_HK_RCV", "SVR", "TCP_ESTABLISHED"],
        ["MOS_ON_CONN_NEW_DATA", "MOS_NULL", "SVR", "TCP_ESTABLISHED"]]
    assert [row[:3] for row in rows[-4:]] == [
        ["MOS_ON_CONN_END", "MOS_HK_SND", "CLI"], ["MOS_ON_CONN_END", "MOS_HK_RCV", "CLI"],
        ["MOS_ON_CONN_END", "MOS_HK_SND", "SVR"], ["MOS_ON_CONN_END", "MOS_HK_RCV", "SVR"]]
    # CONN_NEW_DATA and CONN_END show the packet that raised them (the request; the last ACK).
    assert lines[request + 2].endswith("PA len 87")
    assert all(line.endswith(" A len 0") for line in lines[-4:])
    assert len({line.split()[1] for line in lines}) == 1        # one flow socket


def test_runnable_doc_snippets(monkeypatch, capsys):
    """Every ```python block of docs/*.md that starts with `from mosxdp import` and reads a
    capture of tests/data is a whole script: it runs from the repository root without an
    error and prints something."""
    monkeypatch.chdir(ROOT)
    ran = 0
    for doc, block in doc_python_blocks():
        if not block.startswith("from mosxdp import") or "tests/data/" not in block:
            continue
        try:
            exec(compile(block, f"{doc} snippet", "exec"), {"__name__": "__snippet__"})
        finally:
            from mosxdp import mtcp_destroy
            mtcp_destroy()
        out, _ = capsys.readouterr()
        assert out.strip(), f"{doc}: a snippet printed nothing:\n{block}"
        ran += 1
    assert ran >= 2


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_doc_links_resolve():
    """Relative links of README.md and docs/*.md point at files that exist, and their
    #anchors at headings (or <a id>) of the target."""
    pages = [os.path.join(ROOT, "README.md")] + [os.path.join(DOCS, d) for d in sorted(os.listdir(DOCS))
                                                 if d.endswith(".md")]
    anchors = {}

    def anchors_of(path):
        if path not in anchors:
            with open(path) as f:
                text = f.read()
            text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
            anchors[path] = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)} | set(
                re.findall(r'<a id="([^"]+)">', text))
        return anchors[path]

    checked = 0
    for page in pages:
        with open(page) as f:
            text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            assert os.path.exists(full), f"{os.path.basename(page)}: broken link {target}"
            if anchor:
                assert anchor in anchors_of(full), f"{os.path.basename(page)}: no anchor {target}"
            checked += 1
    assert checked >= 20
