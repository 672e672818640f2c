"""netns tier: the state-only kernel path (MOSX_STATE_ONLY; connlog by default) live.

Real downloads (curl from `mosxdp.demo.server`, IPv4 and IPv6, 1 KiB to 8 MiB) through
the inline testbed (mosxdp.demo.testbed)::

    cli0 <==> A [mon: mosxdp run connlog --iface A --peer B] B <==> srv0

* every download is byte-identical at the client, though the kernel forwarded the flows'
  data frames itself: the monitor saw only the SYN, SYN-ACK, the handshake's ACK, the FINs
  (or RST) and their ACKs, a handful of frames per flow;
* each flow's conn.log line equals, field for field (counts, bytes, states; not the
  clock), the line that connlog writes offline, inspecting every frame, for the frames the
  receivers got: tcpdump on srv0 (client to server) and cli0 (server to client), merged;
  the monitor's egress veths dropped nothing, so the receivers got what the monitor saw.
  Where frames of the two directions crossed, the order is the monitor's, and the
  receivers got them later (the ones sent on by user space, an ACK watch's, later still
  than those the kernel forwarded): the history has the same letters, maybe in another
  order, and of two FINs that crossed the one the monitor saw first may be the other one
  at the receivers, so which side ends in TIME_WAIT may differ (the exact order against
  the same frames: tests/bpf/test_hybrid_verdicts.py, tests/unit/test_hybrid_offline.py);
* the kernel's counts were all merged (kernel_merged_packets == verdict_state_only) and no
  verdict entry is left;
* ``--full-inspection`` brings every frame of a flow through the monitor again.
"""
from __future__ import annotations

import json
import re
import subprocess

import livekit
import pytest
from livekit import PY, ROOT, Bed, Monitor, Tcpdump, json_lines, sha256_file

pytestmark = pytest.mark.netns

PORT = 8080
SIZES = {"f1k": 1024, "f300k": 300 * 1024, "f8m": 8 * 1024 * 1024}
CLOCK = ("ts", "uid", "duration")    # the live clock is not the capture's
ORDER = ("history", "client_state", "server_state")   # see above


@pytest.fixture(scope="module")
def live_env():
    livekit.require_live(("curl", "tcpdump", "mergecap"))


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    return livekit.www_dir(tmp_path_factory.mktemp("www"), SIZES)


@pytest.fixture(scope="module")
def bed(live_env, www, tmp_path_factory):
    bed = Bed.start(www, tmp_path_factory.mktemp("bed"), (PORT,))
    try:
        yield bed
    finally:
        bed.close()


def tx_dropped(bed, ifname) -> int:
    """Frames the monitor's veth ``ifname`` failed to hand to its peer."""
    r = bed.sh("mon", "ip", "-j", "-s", "link", "show", ifname)
    return json.loads(r.stdout)[0]["stats64"]["tx"]["dropped"]


def start(bed, *args) -> Monitor:
    log = bed.out_path("conn.log")
    stats = bed.out_path("stats.json")
    mon = Monitor(bed, "connlog", "--output", log, "--stats-json", stats, *args)
    mon.conn_log, mon.stats_path = log, stats
    try:
        mon.warm_up(lambda: len(json_lines(log)) > 0)
    except BaseException:
        mon.close()
        raise
    return mon


def download(bed, www, family, name, *extra) -> int:
    """GET ``name``, byte-identical at the client: curl's local port."""
    out = bed.out_path(f"{name}.v{family}")
    r = bed.tb.run("cli", bed.curl_argv(family, name, out, "-w", "%{local_port}", *extra),
                   capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sha256_file(out) == sha256_file(www / name), (family, name)
    return int(r.stdout)


def test_connlog_state_only_lines_equal_full_inspection_of_the_receivers_captures(bed, www):
    tb = bed.tb
    mon = start(bed)
    try:
        # each direction as its receiver got it; curl paced so tcpdump keeps up
        caps = {"c2s": Tcpdump(bed, "srv", tb.srv_if, bed.out_path("srv0.pcap"),
                               f"tcp dst port {PORT}", "-B", 65536),
                "s2c": Tcpdump(bed, "cli", tb.cli_if, bed.out_path("cli0.pcap"),
                               f"tcp src port {PORT}", "-B", 65536)}
        egress = (tb.iface_a, tb.iface_b)
        dropped0 = [tx_dropped(bed, i) for i in egress]
        try:
            ports = [download(bed, www, family, name, "--limit-rate", "20M")
                     for family in (4, 6) for name in SIZES]
        finally:
            reports = [cap.stop(settle=1.0) for cap in caps.values()]
        dropped = [tx_dropped(bed, i) - d0 for i, d0 in zip(egress, dropped0)]
        mon.stop_clean()
    finally:
        mon.close()
    for report in reports:
        assert re.search(r"\b0 packets dropped by kernel", report), report
    assert dropped == [0, 0], dropped          # the receivers got what the monitor saw
    merged = bed.out_path("merged.pcap")
    subprocess.run(["mergecap", "-F", "pcap", "-w", merged, caps["c2s"].path, caps["s2c"].path],
                   check=True, capture_output=True)
    offline_log = bed.out_path("conn-offline.log")
    r = subprocess.run([PY, "-m", "mosxdp.cli", "run", "connlog", "--pcap", merged, "--output",
                        offline_log], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    live = {x["id.orig_p"]: x for x in json_lines(mon.conn_log) if x["id.resp_p"] == PORT}
    offline = {x["id.orig_p"]: x for x in json_lines(offline_log)}
    assert set(ports) <= live.keys() and set(ports) <= offline.keys(), (ports, live, offline)
    for port, (family, name) in zip(ports, [(f, n) for f in (4, 6) for n in SIZES]):
        a = {k: v for k, v in live[port].items() if k not in CLOCK + ORDER}
        b = {k: v for k, v in offline[port].items() if k not in CLOCK + ORDER}
        assert a == b, (family, name, a, b)
        x, y = live[port], offline[port]
        assert sorted(x["history"]) == sorted(y["history"]), (x, y)
        assert sorted((x["client_state"], x["server_state"])) == \
            sorted((y["client_state"], y["server_state"])), (x, y)
        assert a["resp_bytes"] > SIZES[name] and a["missed_bytes"] == 0, a
        assert a["conn_state"] == "SF" and a["end_reason"] == "fin", a

    stats = json.loads(mon.stats_path.read_text())["live"]
    xdp, proc = stats["xdp"], stats["processor"]
    flows = len(live)                                     # the warm-up ones too
    frames = sum(x["orig_pkts"] + x["resp_pkts"] for x in live.values())
    # a handful of frames per flow reached the monitor; the kernel counted the rest
    assert stats["frames"] <= 8 * flows, (stats["frames"], flows)
    assert xdp["verdict_state_only"] >= frames - 8 * flows, (xdp, frames)
    assert proc["kernel_merged_packets"] == xdp["verdict_state_only"], (proc, xdp)
    assert proc["kernel_verdicts_set"] == flows, (proc, flows)
    assert stats["verdict_entries_left"] == 0
    assert "accounting_error" not in stats, stats["accounting_error"]


def test_full_inspection_brings_every_frame_to_the_monitor(bed, www):
    mon = start(bed, "--full-inspection")
    try:
        port = download(bed, www, 4, "f300k")
        mon.stop_clean()
    finally:
        mon.close()
    (line,) = [x for x in json_lines(mon.conn_log) if x["id.orig_p"] == port]
    assert line["resp_bytes"] > SIZES["f300k"] and line["conn_state"] == "SF", line
    stats = json.loads(mon.stats_path.read_text())["live"]
    assert stats["xdp"].get("verdict_state_only", 0) == 0, stats["xdp"]
    assert stats["processor"]["kernel_verdicts_set"] == 0, stats["processor"]
    assert stats["frames"] >= line["orig_pkts"] + line["resp_pkts"], stats
