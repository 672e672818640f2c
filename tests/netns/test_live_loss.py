"""netns tier: frames the live datapath loses are reported everywhere, equal to the
kernel's own counters.

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run streamhash --iface A --peer B] B <== veth ==> srv0

(a) A SYN flood from the client namespace (spoofed sources, an AF_PACKET socket, as fast
    as it goes) against a monitor with small rings (ring_size 256, frame_count 1024):
    Python cannot keep up and the kernel drops most frames at its AF_XDP socket. The
    status line, the Prometheus endpoint, the exit summary and --stats-json give the same
    counts by reason as the kernel's XDP_STATISTICS of the monitor's sockets (read here,
    from outside the monitor, through pidfd_getfd: `ss --xdp` needs
    CONFIG_XDP_SOCKETS_DIAG, which this kernel may lack), and their total equals the
    drops the veth driver counts on A (`ethtool -S`: a refused XDP redirect is an RX drop)
    and the XDP program's own count of refused redirects. One warning line says so.
(b) The server's end of the B link down: every frame the monitor forwards is dropped by the
    kernel at B's transmit; the monitor's "tx device drop" is B's tx_dropped counter over
    its run: the SYNs it forwarded (and a frame the kernel forwarded meanwhile, if any).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import time

import pytest

from livekit import APPS, Bed, require_live, send_syns, wait_until

pytestmark = pytest.mark.netns

PLAIN = 8080
SYNS = 60_000
SOL_XDP, XDP_STATISTICS, AF_XDP = 283, 7, 44
XDP_STAT_NAMES = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                  "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
SYS_PIDFD_GETFD = 438  # x86-64

@pytest.fixture(scope="module")
def live_env():
    require_live(("curl", "ethtool"))


@pytest.fixture
def bed(live_env, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "f1k").write_bytes(os.urandom(1024))
    bed = Bed.start(www, tmp_path, (PLAIN,))
    try:
        yield bed
    finally:
        bed.close()


def kernel_xdp_statistics(pid: int) -> dict[str, int]:
    """XDP_STATISTICS of every AF_XDP socket of process ``pid``, summed: read from here on
    a duplicate of each socket (pidfd_getfd), not through the monitor."""
    libc = ctypes.CDLL(None, use_errno=True)
    total = dict.fromkeys(XDP_STAT_NAMES, 0)
    pidfd = os.pidfd_open(pid)
    found = 0
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            assert fd >= 0, os.strerror(ctypes.get_errno())
            s = socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=fd)
            try:
                raw = s.getsockopt(SOL_XDP, XDP_STATISTICS, 48)
            except OSError:       # not an AF_XDP socket
                continue
            finally:
                s.close()
            found += 1
            for key, value in zip(XDP_STAT_NAMES, memoryview(raw).cast("Q")):
                total[key] += value
    finally:
        os.close(pidfd)
    assert found == 2, f"the monitor has {found} AF_XDP sockets, expected A's and B's"
    return total


def ethtool_rx_drops(bed, ifname: str) -> int:
    out = bed.sh("mon", "ethtool", "-S", ifname).stdout
    return sum(int(v) for v in re.findall(r"^\s*rx_queue_\d+_drops: (\d+)$", out, re.M))


def link_counter(bed, ifname: str, name: str) -> int:
    return int(bed.sh("mon", "cat", f"/sys/class/net/{ifname}/statistics/{name}").stdout)


def metrics_lost(bed) -> dict[str, int]:
    text = bed.sh("mon", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9109/metrics").stdout
    return {k: int(v) for k, v in
            re.findall(r'^mosxdp_frames_lost_total\{reason="(\w+)"\} (\d+)$', text, re.M)}


def reasons(text: str) -> dict[str, int]:
    """'fill ring empty 816, rx ring full 92478' -> {'fill_ring_empty': 816, ...}"""
    return {m[1].replace(" ", "_"): int(m[2]) for m in re.finditer(r"([a-z][a-z ]*?) (\d+)(?:, |$)", text)}


def nonzero(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


def start_monitor(bed, tmp_path, *extra):
    config = tmp_path / "small-rings.toml"
    config.write_text("[datapath]\nring_size = 256\nframe_count = 1024\n")
    stats = tmp_path / "stats.json"
    mon = bed.monitor(APPS / "streamhash.py", "--log", tmp_path / "flows.jsonl", "--config",
                      config, "--stats", "--stats-json", stats, "--metrics-port", "9109", *extra)
    return mon, stats


def send(bed, tmp_path, count, rate):
    return send_syns(bed.tb, PLAIN, count, rate, seed=11)


def settled(read, mon, timeout=30.0):
    """``read()`` once two reads 0.5 s apart agree (the monitor has caught up)."""
    box = [read()]

    def same():
        time.sleep(0.5)
        now = read()
        same_, box[0] = now == box[0], now
        return same_
    wait_until("the counters to settle", same, timeout, mon.alive, step=0)
    return box[0]


def status_and_summary(log: str):
    status = [line for line in log.splitlines() if " kpps, out " in line]
    assert status, log
    m = re.search(r"lost [\d.]+ kpps \([\d.]+%\), total (\d+) \((.*?)\), callback errors", status[-1])
    assert m, status[-1]
    summary = re.search(r"^mosxdp: lost (\d+) frames(?: \(.*?\))?: (.*)$", log, re.M)
    assert summary, log
    return (int(m[1]), reasons(m[2])), (int(summary[1]), reasons(summary[2]))


def test_syn_flood_loss_is_reported_as_the_kernel_counts_it(bed, tmp_path):
    tb = bed.tb
    mon, stats = start_monitor(bed, tmp_path)
    try:
        drops_before = ethtool_rx_drops(bed, tb.iface_a) + ethtool_rx_drops(bed, tb.iface_b)
        flood = send(bed, tmp_path, SYNS, 0)
        # The kernel's own counters, and the monitor's Prometheus view of them, once no
        # frame is in flight (nothing arrives after the flood: the same instant for both).
        # (tx_ring_empty_descs goes on counting the monitor's idle wake-ups: not a loss)
        kernel = settled(lambda: {k: v for k, v in kernel_xdp_statistics(mon.proc.pid).items()
                                  if k != "tx_ring_empty_descs"}, mon)
        driver_drops = ethtool_rx_drops(bed, tb.iface_a) + ethtool_rx_drops(bed, tb.iface_b) - drops_before
        metrics = metrics_lost(bed)
        time.sleep(1.5)           # a status line after the last change
        assert mon.stop(signal.SIGINT) == 0, mon.log()
    finally:
        mon.close()
    log = mon.log_path.read_text(errors="replace")
    live = json.loads(stats.read_text())["live"]
    print(f"\nflood {flood}\nkernel XDP_STATISTICS {kernel}\nveth RX drops {driver_drops}\n"
          f"monitor lost {nonzero(live['lost'])}, read {live['frames']}")

    expected = {"fill_ring_empty": kernel["rx_fill_ring_empty_descs"],
                "rx_ring_full": kernel["rx_ring_full"],
                # copy mode: rx_dropped counts the fill-ring misses too
                "rx_dropped_other": kernel["rx_dropped"] - kernel["rx_fill_ring_empty_descs"]}
    total = sum(expected.values())
    # the flood overflowed the small rings: most SYNs never reached Python
    assert total > SYNS // 2, (kernel, flood)
    # the veth driver counts each refused redirect as an RX drop; the XDP program's
    # tracepoint counts the same redirects
    assert driver_drops == total
    assert live["xdp"]["xsk_redirect_err"] == total and live["xdp"]["xsk_redirect_other"] == 0
    # every TCP frame went to the sockets: read by Python or lost on the way
    assert live["xdp"]["to_xsk"] == live["frames"] + total, live["xdp"]

    assert nonzero(metrics) == nonzero(expected), metrics
    assert nonzero(live["lost"]) == nonzero(expected), live["lost"]
    (status_total, status_reasons), (summary_total, summary_reasons) = status_and_summary(log)
    assert status_total == summary_total == total, log[-3000:]
    assert status_reasons == summary_reasons == nonzero(expected), log[-3000:]
    warnings = [line for line in log.splitlines() if line.startswith("mosxdp: warning: lost ")]
    assert len(warnings) == 1 and "Python is not keeping up" in warnings[0], warnings


def test_frames_the_kernel_drops_at_transmit_are_reported(bed, tmp_path):
    tb = bed.tb
    dropped_before = link_counter(bed, tb.iface_b, "tx_dropped")
    mon, stats = start_monitor(bed, tmp_path)
    count = 300
    try:
        # srv0 down: B has no carrier, the kernel drops what the monitor transmits on B
        bed.sh("srv", "ip", "link", "set", tb.srv_if, "down")
        wait_until("B without carrier", lambda: link_counter(bed, tb.iface_b, "../carrier") == 0,
                   10, mon.alive)
        send(bed, tmp_path, count, 2000)       # paced: Python keeps up, no RX loss
        # B's counter and the monitor's Prometheus view of it, read together
        tx_dropped, lost = settled(lambda: (link_counter(bed, tb.iface_b, "tx_dropped"),
                                            metrics_lost(bed)), mon)
        tx_dropped -= dropped_before
        time.sleep(1.5)           # a status line after the last change
        assert mon.stop(signal.SIGINT) == 0, mon.log()
    finally:
        mon.close()
    # with the monitor gone nothing crosses to B any more: its count at the monitor's end
    tx_dropped_at_exit = link_counter(bed, tb.iface_b, "tx_dropped") - dropped_before
    log = mon.log_path.read_text(errors="replace")
    live = json.loads(stats.read_text())["live"]
    print(f"\nB tx_dropped {tx_dropped}, {tx_dropped_at_exit} at exit, monitor lost "
          f"{nonzero(live['lost'])}, kernel-forwarded {live['xdp']['kernel_forward']}")
    # B dropped the SYNs the monitor forwarded, and whatever the kernel forwarded to B
    # (an ARP or a neighbour solicitation of the client: the program's kernel_forward)
    assert count <= tx_dropped <= tx_dropped_at_exit <= count + live["xdp"]["kernel_forward"]
    assert lost == {**dict.fromkeys(lost, 0), "tx_device_drop": tx_dropped}, lost
    # The program stays attached after the stop (fail-open): a frame the kernel forwards to
    # B between the monitor's last count and the read above (a neighbour solicitation)
    # counts only at B.
    at_end = live["lost"]["tx_device_drop"]
    assert tx_dropped <= at_end <= tx_dropped_at_exit, (tx_dropped, at_end, tx_dropped_at_exit)
    assert nonzero(live["lost"]) == {"tx_device_drop": at_end}, live["lost"]
    (_, status_reasons), (_, summary_reasons) = status_and_summary(log)
    assert summary_reasons == {"tx_device_drop": at_end}, log[-3000:]
    assert status_reasons["tx_device_drop"] in range(tx_dropped, tx_dropped_at_exit + 1), log[-3000:]
