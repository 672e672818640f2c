"""The offline engine's frame counts and the core's per-frame counters, also when a run is
cut short (the engine keeps its counts in locals while the loop runs)."""
import pytest

from mosxdp import mtcp_create_context
from mosxdp.engine import OfflineEngine
from flowcraft import Conv, api  # noqa: F401  (api: a fixture)


class SinkFailed(Exception):
    pass


def _frames():
    conv = Conv()
    conv.full()
    frames = [(ts, frame) for ts, frame in conv.frames]
    frames.insert(3, (frames[2][0], b"\x00" * 10))                 # malformed: truncated_l2
    frames.insert(5, (frames[4][0], b"\x02" * 12 + b"\x08\x06" + b"\x00" * 28))   # ARP
    return frames


def _engine(frames, sink, batch_size):
    mctx = mtcp_create_context(0)
    source = ((ts, memoryview(bytearray(frame))) for ts, frame in frames)
    return mctx, OfflineEngine(mctx, source, sink, batch_size)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_counts_of_a_complete_run(api, batch_size):
    frames = _frames()
    out = []
    mctx, engine = _engine(frames, lambda ts, frame: out.append(frame), batch_size)
    engine.run()
    assert engine.frames_in == engine.frames_out == len(out) == len(frames)
    c = mctx.stack.counters
    assert c["frames"] == len(frames)
    assert (c["tcp_segments"], c["non_tcp"], c["malformed"]) == (len(frames) - 2, 1, 1)
    assert c["frames"] == c["tcp_segments"] + c["non_tcp"] + c["ip_fragments"] + c["malformed"]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_counts_when_the_sink_fails(api, batch_size):
    frames = _frames()
    written = []

    def sink(ts, frame):
        if len(written) == 6:
            raise SinkFailed()
        written.append(frame)
    mctx, engine = _engine(frames, sink, batch_size)
    with pytest.raises(SinkFailed):
        engine.run()
    # The seventh frame went through the core, but its output failed: not counted as done.
    assert engine.frames_in == engine.frames_out == 6
    assert mctx.stack.counters["frames"] == 7
