"""Loss reporting without privileges: the reasons computed from the kernel's socket
statistics, the XDP program's counters and the engine's; the status line, the loss
warning (threshold, rate limit), the Prometheus lines, the exit summary line and the
loss_warning configuration key. The live counterpart (a SYN flood, compared with the
kernel's own counters) is tests/netns/test_live_loss.py."""
from __future__ import annotations

import io
import math
import re

import pytest

from mosxdp.config import ConfigError, load_config
from mosxdp.engine.live import LiveEngine
from mosxdp.engine.loss import REASONS, loss_line, loss_share, lost_frames
from mosxdp.engine.status import LiveStatus, prometheus_text


def sock(**kernel):
    """A socket's stats as XskSocket.stats gives them (kernel_* from XDP_STATISTICS)."""
    base = {"rx_dropped": 0, "rx_invalid_descs": 0, "tx_invalid_descs": 0, "rx_ring_full": 0,
            "rx_fill_ring_empty_descs": 0, "tx_ring_empty_descs": 0}
    return {f"kernel_{k}": v for k, v in {**base, **kernel}.items()}


def test_copy_mode_fill_ring_empty_is_not_counted_twice():
    # copy mode: a frame without a fill-ring frame counts in rx_dropped too
    sockets = [sock(rx_dropped=120, rx_fill_ring_empty_descs=100, rx_ring_full=7),
               sock(rx_dropped=5, rx_fill_ring_empty_descs=5, tx_invalid_descs=2)]
    xdp = {"xsk_redirect_err": 132, "xsk_redirect_other": 0, "forward_redirect_err": 4}
    lost = lost_frames({"tx_ring_full_dropped": 6, "outbox_dropped": 1}, sockets, xdp,
                       device_tx_dropped=3)
    assert lost == {"fill_ring_empty": 105, "rx_ring_full": 7, "rx_dropped_other": 20,
                    "xsk_redirect_error": 0, "observe_lost": 0,
                    "forward_redirect_error": 4, "tx_ring_full": 6,
                    "tx_invalid": 2, "tx_device_drop": 3, "outbox_dropped": 1,
                    "replaced_dropped": 0}
    # the tracepoint's count of refused redirects is what the sockets counted
    assert sum(lost[k] for k in ("fill_ring_empty", "rx_ring_full", "rx_dropped_other")) == 132


def test_observe_only_copies_the_ring_had_no_room_for_are_lost_before_python():
    lost = lost_frames({}, [], {"observed": 1000, "observe_lost": 25})
    assert lost["observe_lost"] == 25
    share, seen = loss_share(lost, 1000)
    assert seen == 1025 and share == 25 / 1025


def test_zero_copy_counts_rx_dropped_apart():
    sockets = [sock(rx_dropped=3, rx_fill_ring_empty_descs=40)]
    lost = lost_frames({}, sockets, None, zero_copy=True)
    assert (lost["fill_ring_empty"], lost["rx_dropped_other"]) == (40, 3)
    assert set(lost) | {"tx_unsent_at_exit"} == set(REASONS)


class FakeSocket:
    closed = False

    def __init__(self, **kernel):
        self.kernel = kernel

    def stats(self):
        return sock(**self.kernel)


class FakeProgram:
    def __init__(self):
        self.values = {"rx_total": 0, "to_xsk": 0}

    def counters(self):
        return dict(self.values)


class FakeStack:
    def __init__(self):
        self.counters = {"dropped": 3, "callback_errors": 0}
        self.reassembly_mem = self.reassembly_mem_peak = 0

    def flow_count(self):
        return 0


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def live():
    """A LiveEngine that was never entered (no sockets of its own) with a fake socket and
    program: its real ``lost``/``xdp_counters`` read them; a status on a fake clock."""
    engine = LiveEngine("eth0", "eth1")
    engine.sockets = [FakeSocket()]
    engine.program = FakeProgram()
    engine.counters["dropped"] = 3   # inline, the engine counts the frames verdicts dropped
    clock = Clock()
    out = io.StringIO()
    status = LiveStatus(engine, FakeStack(), stream=out, clock=clock, warn_percent=1.0,
                        warn_every=10.0)
    return engine, status, clock, out


def step(live, frames, fill_empty, rx_full=0, seconds=1.0):
    """One status interval: ``frames`` read by Python, the socket's kernel counters set to
    these totals, the to_xsk count to what reached or was refused."""
    engine, status, clock, _ = live
    engine.counters["frames"] += frames
    engine.counters["forwarded"] += frames
    engine.sockets[0].kernel = {"rx_dropped": fill_empty, "rx_fill_ring_empty_descs": fill_empty,
                                "rx_ring_full": rx_full}
    engine.program.values["to_xsk"] = engine.counters["frames"] + fill_empty + rx_full
    engine.program.values["rx_total"] = engine.program.values["to_xsk"]
    clock.now += seconds
    status.tick()


def lines(out, word):
    return [line for line in out.getvalue().splitlines() if word in line]


def test_status_line_shows_the_loss_rate_and_the_totals_by_reason(live):
    step(live, 1000, 0)
    step(live, 500, 4500, 1000)       # 5500 lost of 6000
    status_lines = lines(live[3], " kpps, out ")
    assert "verdict drops 3, lost 0, callback errors" in status_lines[0]
    assert status_lines[1] == (
        "mosxdp: in 0.5 kpps, out 0.5 kpps, kernel 6.0 kpps (100.0% to Python), flows 0, "
        "verdict drops 3, lost 5.5 kpps (91.7%), total 5500 (fill ring empty 4500, "
        "rx ring full 1000), callback errors 0")


def test_one_warning_over_the_threshold_then_one_per_interval_with_what_came_between(live):
    engine, status, clock, out = live
    step(live, 10000, 100)            # 100 of 10100: 0.99%, under 1%
    assert not lines(out, "warning")
    step(live, 10000, 300)            # 200 of 10200: 1.96%
    step(live, 10000, 500)            # within 10 s of the last warning: silent
    step(live, 10000, 500)            # no loss
    warned = lines(out, "warning")
    assert warned == ["mosxdp: warning: lost 200 of 10200 frames (2.0%) in the last 1.0 s "
                      "(fill ring empty 200), 300 in all; Python is not keeping up "
                      "(see Loss in docs/datapath.md)"]
    clock.now += 8.0
    step(live, 1000, 600)             # 10 s after the first: the next one, with the 200 between
    warned = lines(out, "warning")
    assert len(warned) == 2 and status.warnings == 2
    assert warned[1].startswith("mosxdp: warning: lost 100 of 1100 frames (9.1%) in the last 9.0 s")
    assert ", 200 more since the last warning, 600 in all" in warned[1]


def test_warnings_without_status_lines_and_none_when_disabled(live):
    engine, status, clock, out = live
    status.print_lines = False
    step(live, 10, 90)
    assert not lines(out, " kpps, out ") and len(lines(out, "warning")) == 1
    quiet = LiveStatus(engine, FakeStack(), stream=out, clock=clock, print_lines=False,
                       warn_percent=0)
    assert not quiet.active


def test_prometheus_has_every_reason_and_the_verdict_drops_once(live):
    engine, status, clock, out = live
    step(live, 100, 40, 2)
    engine.counters["outbox_dropped"] = 1
    text = prometheus_text(status)
    got = dict(re.findall(r'^mosxdp_frames_lost_total\{reason="(\w+)"\} (\d+)$', text, re.M))
    assert got == {**dict.fromkeys(set(REASONS) - {"tx_unsent_at_exit"}, "0"),
                   "fill_ring_empty": "40", "rx_ring_full": "2", "outbox_dropped": "1"}
    assert "# TYPE mosxdp_frames_lost_total counter" in text
    # the engine counts Python's drops again when it returns their frames: not added twice
    assert re.search(r"^mosxdp_frames_dropped_total 3$", text, re.M)


def test_summary_line():
    assert loss_line({k: 0 for k in REASONS}, 50) == "mosxdp: lost 0 frames"
    line = loss_line({"fill_ring_empty": 90, "rx_ring_full": 0, "tx_unsent_at_exit": 2}, 10)
    assert line == ("mosxdp: lost 92 frames (92.0% of the 100 read or lost before Python): "
                    "fill ring empty 90, tx unsent at exit 2")
    # a frame lost at transmit was read first: counted once in what was seen
    line = loss_line({"tx_device_drop": 300}, 311)
    assert line.startswith("mosxdp: lost 300 frames (96.5% of the 311 read or lost before Python)")
    assert loss_line({"forward_redirect_error": 4}, 0) == "mosxdp: lost 4 frames: forward redirect error 4"


@pytest.mark.parametrize("value", [-1, 100.5, math.nan, math.inf, "1%", True])
def test_loss_warning_refuses_what_is_not_a_percentage(tmp_path, value):
    path = tmp_path / "c.toml"
    path.write_text(f"[datapath]\nloss_warning = {value!r}\n".replace("True", "true"))
    with pytest.raises(ConfigError, match=r"\[datapath\] loss_warning = .*(from 0 to 100)"):
        load_config(path)


def test_loss_warning_default_and_off():
    assert load_config().loss_warning == 1.0
    assert load_config(loss_warning=0).loss_warning == 0.0


def test_prometheus_names_follow_the_conventions(live):
    """Every metric has the mosxdp_ prefix, a HELP and a TYPE; a counter ends in _total, a
    gauge does not; a byte quantity is in bytes; each name is declared once; every core
    counter is its own metric (no label that mixes what does not add up)."""
    step(live, 100, 40, 2)
    text = prometheus_text(live[1])
    declared = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    helped = re.findall(r"^# HELP (\S+) \S", text, re.M)
    names = [name for name, _ in declared]
    assert names == helped and len(names) == len(set(names))
    for name, kind in declared:
        assert re.fullmatch(r"mosxdp_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), (name, kind)
        assert kind in ("counter", "gauge")
        if "memory" in name:
            assert name.endswith("_bytes"), name
    samples = re.findall(r"^([a-z_0-9]+)(\{[^}]*\})? (\S+)$", text, re.M)
    assert {name for name, _, _ in samples} == set(names)
    assert all(float(value) >= 0 for _, _, value in samples)
    assert {labels for _, labels, _ in samples} - {""} == {
        f'{{reason="{r}"}}' for r in set(REASONS) - {"tx_unsent_at_exit"}}
    assert "mosxdp_core_dropped_total 3" in text.splitlines()
