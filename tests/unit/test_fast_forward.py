"""Fast forward (engine/kernel_twin.py): offline, the regular frames of a state-only flow
are counted by the twin and the emulation is brought up to date before each other frame.
Whatever the traffic (loss, reordering, duplicates, retransmissions, small and zero
windows, window scaling, acknowledgments of bytes never seen, resets, flows left open),
connlog's lines are those of --full-inspection, where every frame goes through the core."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp import cli
from mosxdp.engine import kernel_twin
from mosxdp.io.pcap import PcapWriter

from flowcraft import Conv

STEP = st.tuples(st.sampled_from(["c", "s"]),                 # who sends
                 st.sampled_from(["data", "data", "data", "ack", "ack_ahead", "keepalive"]),
                 st.integers(1, 1400),                        # payload size
                 st.sampled_from([None, None, 0, 1, 200, 3000]))   # window field
PERTURB = st.lists(st.tuples(st.sampled_from(["drop", "dup", "swap"]), st.integers(0, 200)),
                   max_size=4)


def conversation(wscales, steps, ending, cport):
    c = Conv(cport=cport, isn_c=0xFFFFF000 + cport, isn_s=7 * cport)
    c.handshake(*wscales)
    for frm, kind, size, window in steps:
        kw = {} if window is None else {"window": window}
        if kind == "data":
            c.data(frm, bytes([cport & 0xFF]) * size, **kw)
        elif kind == "ack":
            c.ack(frm, **kw)
        elif kind == "ack_ahead":      # acknowledges bytes the capture never had
            c.ack(frm, ack=(c.nxt["s" if frm == "c" else "c"] + size) & 0xFFFFFFFF, **kw)
        else:                          # a keepalive: one byte below the next
            c.seg(frm, "A", b"k", seq=(c.nxt[frm] - 1) & 0xFFFFFFFF, advance=False)
    if ending == "close":
        c.close()
    elif ending == "rst":
        c.rst("s")
    return c.frames


def perturbed(frames, perturb):
    head, rest = frames[:3], list(frames[3:])
    for kind, at in perturb:
        if not rest:
            break
        i = at % len(rest)
        if kind == "drop":
            del rest[i]
        elif kind == "dup":
            rest.insert(i, rest[i])
        elif i + 1 < len(rest):
            rest[i], rest[i + 1] = rest[i + 1], rest[i]
    return head + rest


def _connlog(pcap, out, *extra):
    assert cli.main(["run", "connlog", "--output", str(out), "--pcap", str(pcap),
                     "--no-progress", *extra]) == 0
    return out.read_text()


FLOW = st.tuples(st.tuples(st.sampled_from([None, 0, 2, 7, 14]), st.sampled_from([None, 0, 3, 9])),
                 st.lists(STEP, min_size=1, max_size=14), PERTURB,
                 st.sampled_from(["close", "rst", "open"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(FLOW, min_size=1, max_size=3))
def test_connlog_lines_equal_those_of_full_inspection(tmp_path_factory, flows):
    tmp = tmp_path_factory.mktemp("ff")
    frames = []
    for n, (wscales, steps, perturb, ending) in enumerate(flows):
        frames += perturbed(conversation(wscales, steps, ending, 40000 + n), perturb)
    frames.sort(key=lambda item: item[0])      # the flows interleaved by time
    pcap = tmp / "in.pcap"
    with PcapWriter(pcap) as writer:
        for ts, frame in frames:
            writer.write(ts, frame)
    fast = _connlog(pcap, tmp / "fast.log")
    full = _connlog(pcap, tmp / "full.log", "--full-inspection")
    assert fast == full


def test_regular_frames_are_fast_forwarded(tmp_path, monkeypatch):
    """The equality above is not the twin standing aside: in a plain conversation the
    frames between the handshake and the FINs are taken."""
    taken = []
    catch_up = kernel_twin.TwinProcessor._ff_catch_up

    def counted(self, flow):
        raw = self._ff[flow][0]
        taken.append(kernel_twin._COUNTS.unpack_from(raw, kernel_twin._COUNTS_AT)[:2])
        return catch_up(self, flow)

    monkeypatch.setattr(kernel_twin.TwinProcessor, "_ff_catch_up", counted)
    c = Conv()
    c.handshake(7, 7)
    for _ in range(10):
        c.data("c", b"q" * 100)
        c.data("s", b"r" * 1000)
    c.close()
    pcap = tmp_path / "in.pcap"
    with PcapWriter(pcap) as writer:
        for ts, frame in c.frames:
            writer.write(ts, frame)
    fast = _connlog(pcap, tmp_path / "fast.log")
    assert sum(map(sum, taken)) == 20      # the 20 data frames: the handshake ended before
    assert fast == _connlog(pcap, tmp_path / "full.log", "--full-inspection")
    assert '"orig_pkts": 14' in fast and '"resp_bytes": 10000' in fast
