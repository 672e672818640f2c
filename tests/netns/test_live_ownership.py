"""netns tier: who owns an attachment, and what a stop of the inline monitor leaves.
Through the real monitor (`mosxdp run APP --iface A --peer B`, livekit's Bed/Monitor)::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run streamhash --iface A --peer B] B <== veth ==> srv0

- a second `mosxdp run` (inline or passive) on interfaces a running monitor holds is
  refused with one line naming that monitor's PID, touching nothing: a download running
  meanwhile arrives byte-identical through the first monitor, whose app sees it; and
  `mosxdp detach` refuses too;
The downloads are slowed by a token bucket on the server's interface (the wire's pace
whatever path the frames take), so that they span the events.

- SIGTERM or SIGHUP of the inline monitor in the middle of a download: the monitor
  writes the open flow's record, exits 0 and leaves its program attached as the kernel's
  forwarder, saying so; the download completes byte-identical through it; a later run
  takes the interfaces over without complaint, and one with --detach-on-exit leaves
  nothing; `mosxdp detach` of the left program says that it cuts the link, which it does.
"""
from __future__ import annotations

import os
import signal
import time

import livekit
import pytest
from livekit import APPS, Bed, sha256_file

pytestmark = pytest.mark.netns

PORT = 8080
SIZE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def live_env():
    livekit.require_live(("curl", "tc"))


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    return livekit.www_dir(tmp_path_factory.mktemp("www"), {"f8m": SIZE, "f1k": 1024})


@pytest.fixture
def bed(live_env, www, tmp_path):
    with Bed.start(www, tmp_path, (PORT,)) as bed:
        yield bed


def slow_server(bed, rate):
    """A token bucket (tc tbf) on the server's interface: what it sends leaves at ``rate``."""
    bed.sh("srv", "tc", "qdisc", "replace", "dev", bed.tb.srv_if, "root", "tbf", "rate", rate,
           "burst", "64kb", "latency", "200ms")


def flow_record(log, local_port, timeout=10.0) -> dict:
    """streamhash's line of the flow from client port ``local_port``."""
    def find():
        for rec in livekit.json_lines(log):
            if rec["cli"][1] == local_port:
                return rec
        return None
    return livekit.wait_until(f"streamhash's record of port {local_port}", find, timeout)


def size(path) -> int:
    return path.stat().st_size if path.exists() else 0


def lock_files(bed) -> list[str]:
    """The interface lock files of the bed's monitor namespace (mosxdp.io.xdp.owner)."""
    from mosxdp.io.xdp.owner import LOCK_DIR
    prefix = "netns%d-" % os.stat(f"/run/netns/{bed.tb.ns('mon')}").st_ino
    return sorted(n for n in os.listdir(LOCK_DIR) if n.startswith(prefix))


def counters(bed) -> dict:
    return bed.xdp_counters()


def test_second_run_is_refused_and_the_first_keeps_forwarding(bed, www):
    tb = bed.tb
    log = bed.out_path("flows.jsonl")
    mon = bed.monitor(APPS / "streamhash.py", "--log", log)
    try:
        before = counters(bed)
        slow_server(bed, "8mbit")    # 8 MB: about 8 s
        curl, out = bed.start_download(4, "f8m", local_port=42001, max_time=60)
        with bed.killed_after(curl):
            time.sleep(0.5)
            assert curl.poll() is None, "the download ended before the second run"
            refused, outputs = [], []
            for argv in (("--iface", tb.iface_a, "--peer", tb.iface_b), ("--iface", tb.iface_b)):
                outputs.append(bed.out_path("second.jsonl"))
                r = livekit.mosxdp_cli(tb, "run", APPS / "streamhash.py", *argv,
                                       "--log", outputs[-1])
                refused.append((argv[1], r))
            r = bed.detach()
            refused.append(("detach", r))
            running = curl.poll() is None
            _, err = curl.communicate(timeout=60)
        for what, r in refused:
            assert r.returncode != 0, (what, r.stdout, r.stderr)
        for ifname, r in refused[:2]:
            assert r.stderr.strip().splitlines() == \
                [f"mosxdp: error: {ifname} in use by mosxdp PID {mon.proc.pid}"], r.stderr
        assert f"in use by mosxdp PID {mon.proc.pid}; not detaching" in refused[2][1].stderr, \
            refused[2][1].stderr
        assert not any(p.exists() for p in outputs), "a refused run's app created its output"
        mon.alive()
        assert bed.xdp_prog_ids() == mon.prog_ids, "the first monitor's programs were touched"
        assert curl.returncode == 0, err
        assert sha256_file(out) == sha256_file(www / "f8m")
        assert running, "the download ended before the last refusal"
        # the first monitor saw the whole download: its sockets kept receiving
        rec = flow_record(log, 42001)
        assert rec["s2c_len"] > SIZE and rec["lost"] == 0, rec
        delta = {k: v - before.get(k, 0) for k, v in counters(bed).items()}
        assert delta["to_xsk"] > SIZE // 1500 and delta["no_xsk_fallback"] == 0, delta
        mon.stop_clean()
    finally:
        mon.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_download_survives_a_stop_of_the_inline_monitor(bed, www, sig):
    tb = bed.tb
    log = bed.out_path("flows.jsonl")
    mon = bed.monitor(APPS / "streamhash.py", "--log", log)
    try:
        slow_server(bed, "16mbit")   # 8 MB: about 4 s
        curl, out = bed.start_download(4, "f8m", local_port=42002, max_time=60)
        with bed.killed_after(curl):
            time.sleep(1.0)
            assert curl.poll() is None, "the download ended before the stop"
            at_stop = size(out)
            t0 = time.monotonic()
            mon.send_signal(sig)
            assert mon.wait(30) == 0, mon.log()
            took = time.monotonic() - t0
            at_exit = size(out)
            running = curl.poll() is None
            _, err = curl.communicate(timeout=60)
        assert at_stop < SIZE // 2, f"{at_stop} bytes had arrived at the stop: too late"
        assert running, f"the download ended before the monitor did ({took:.1f} s, {at_exit} bytes)"
        assert curl.returncode == 0, err
        assert sha256_file(out) == sha256_file(www / "f8m")
        # the program left behind forwarded the rest in the kernel (before the stop, every
        # TCP frame went to the monitor's sockets)
        assert bed.xdp_prog_ids() == mon.prog_ids
        end = counters(bed)
        assert end["kernel_forward"] > (SIZE - at_stop) // 1500 // 2, end
        lines = [x for x in mon.log().splitlines() if livekit.LEFT_FAIL_OPEN in x]
        assert len(lines) == 1 and f"--iface {tb.iface_a} --iface {tb.iface_b}" in lines[0], mon.log()
        # the open flow's record was written at the stop, with what the monitor saw of it
        rec = flow_record(log, 42002, timeout=1)
        assert 0 < rec["s2c_len"] < SIZE, rec
        status = livekit.mosxdp_cli(tb, "status", "--iface", tb.iface_a)
        assert f"left fail-open by monitor PID {mon.proc.pid}" in status.stdout, status.stdout
    finally:
        mon.close()
    if sig == signal.SIGTERM:
        # a later run takes over without complaint; with --detach-on-exit it leaves nothing
        log2 = bed.out_path("flows2.jsonl")
        mon2 = bed.monitor(APPS / "streamhash.py", "--log", log2, "--detach-on-exit")
        try:
            r, got = bed.download(4, "f1k", local_port=42003)
            assert r.returncode == 0 and sha256_file(got) == sha256_file(www / "f1k")
            flow_record(log2, 42003)
            assert mon2.stop(signal.SIGTERM) == 0, mon2.log()
        finally:
            mon2.close()
        text = mon2.log()
        assert "stale" not in text and "replacing" not in text and "error" not in text, text
        assert bed.xdp_attached() == set(), text
        assert lock_files(bed) == [], "the monitor that detached left its lock files"
        assert f"detached from {tb.iface_a} and {tb.iface_b} (--detach-on-exit)" in text, text
        assert livekit.LEFT_FAIL_OPEN not in text, text
    else:
        r = bed.detach()
        assert r.returncode == 0, r.stderr
        assert f"{tb.iface_a}: detached native program id {mon.prog_ids[tb.iface_a]}" in r.stdout
        cut = [x for x in r.stderr.splitlines() if livekit.LINK_CUT in x]
        assert len(cut) == 2 and f"{tb.iface_a} was inline to {tb.iface_b}" in cut[0], r.stderr
        assert bed.xdp_attached() == set()
        r, _ = bed.download(4, "f1k", max_time=2)
        assert r.returncode == 28, r   # as it said: nothing forwards between A and B


def test_no_lock_files_are_left_for_a_detached_bed(bed):
    """After the monitor and `mosxdp detach`, /run/mosxdp holds no file of the bed's
    namespace (its locks went with what they recorded)."""
    mon = bed.monitor(APPS / "streamhash.py", "--log", bed.out_path("flows.jsonl"))
    try:
        held = lock_files(bed)
        assert len(held) == 2, held
        for name in held:
            text = open(os.path.join("/run/mosxdp", name)).read()
            assert f"pid {mon.proc.pid}\nstate running\n" in text, text
        mon.stop_clean()
        assert lock_files(bed) == []
    finally:
        mon.close()
