"""Several contexts on one datapath, as mOS runs one context per core.

A mOS app creates a context per core (``mtcp_create_context(core)``), sets each up the same
way, and joins them all; the NIC's symmetric RSS gives each core's context a share of the
flows, both directions of a flow to the same core. mosxdp has one datapath per process, run
by ``mtcp_app_join`` in the calling thread, so the first join of a context runs it for every
context that exists then and has not run yet: each frame goes to one of them, chosen by a
symmetric hash of its addresses and ports (a flow's frames, both ways, to the same context;
frames without ports by their addresses; frames that are not IP, or that do not parse, to the
first context). Each context keeps its own flow table, sockets, callbacks and timers, and its
clock follows the datapath's. The later joins of the other contexts wait for that run to end.

``ContextGroup`` is the processor the engines drive in that case, with the Stack's interface
(``process``, ``end_batch``, ``advance_clock``, ``finish``, ``outbox``, ``wire_frames``, the
counters, the kernel hooks); ``GroupContext`` stands for the contexts where the engines take an mctx. With
one context nothing of this is used: the engines drive its Stack directly.
"""
from ..core.packet import PacketError, parse_cut_frame, parse_frame


def _not_cut():
    return 0


def owner_index(frame, count, wire_len=_not_cut):
    """The index (0 .. count - 1) of the context that gets ``frame``; ``wire_len()``: its
    length on the wire when the capture cut it (see Stack.wire_len), else 0."""
    try:
        pkt = parse_frame(frame)
    except PacketError:
        # A frame the capture cut goes where its flow goes, when its headers are whole.
        length = wire_len()
        if length <= len(frame):
            return 0
        try:
            pkt = parse_cut_frame(frame, length)
        except PacketError:
            return 0
    if not pkt.ip_version:
        return 0
    a = (int.from_bytes(pkt.src, "big"), pkt.sport or 0)
    b = (int.from_bytes(pkt.dst, "big"), pkt.dport or 0)
    # A tuple of ints hashes the same in every process (no hash randomisation), so which
    # context gets a flow does not change between runs.
    return hash((a, b) if a <= b else (b, a)) % count


def _sum_dicts(dicts):
    out = {}
    for d in dicts:
        for key, value in d.items():
            out[key] = out.get(key, 0) + value
    return out


def _summed(name, combine):
    """A read-only attribute of the group: ``name`` of every context's Stack, combined."""
    return property(lambda self: combine(getattr(stack, name) for stack in self.stacks))


class ContextGroup:
    """The Stacks of several contexts as one processor (see the module docstring)."""

    def __init__(self, stacks):
        self.stacks = list(stacks)
        self.count = len(self.stacks)
        self.now = 0
        # One outbox for all: the engines send what any context's mtcp_sendpkt queued.
        self.outbox = []
        # One list of the frames a VERDICT_REPLACED stands for, whichever context said it.
        self.wire_frames = []
        for stack in self.stacks:
            stack.outbox = self.outbox
            stack.wire_frames = self.wire_frames
        self.config = self.stacks[0].config
        self._wire_len = _not_cut

    # ------------------------------------------------------------ the frames
    def process(self, frame, ts_us, port):
        if ts_us > self.now:
            self.now = ts_us
        return self.stacks[owner_index(frame, self.count, self._wire_len)].process(
            frame, ts_us, port)

    @property
    def wire_len(self):
        return self._wire_len

    @wire_len.setter
    def wire_len(self, value):
        self._wire_len = value
        for stack in self.stacks:
            stack.wire_len = value

    def end_batch(self):
        """Each context's end of batch, on the datapath's clock (its own timers and idle
        flows even when no frame of the batch was its)."""
        for stack in self.stacks:
            stack.advance_clock(self.now)

    def keep_frames(self):
        for stack in self.stacks:
            stack.keep_frames()

    def advance_clock(self, ts_us):
        if ts_us > self.now:
            self.now = ts_us
        self.end_batch()

    def finish(self):
        for stack in self.stacks:
            if self.now > stack.now:
                stack.now = self.now
            stack.finish()

    # ------------------------------------------------------------ what the engines read
    counters = _summed("counters", _sum_dicts)
    malformed = _summed("malformed", _sum_dicts)
    callback_errors = _summed("callback_errors", _sum_dicts)
    reassembly_mem_peak = _summed("reassembly_mem_peak", sum)
    reassembly_mem = _summed("reassembly_mem", sum)

    def flow_count(self):
        return sum(stack.flow_count() for stack in self.stacks)

    def monitor_filters(self):
        stream, raw = [], []
        for stack in self.stacks:
            s, r = stack.monitor_filters()
            stream += s
            raw += r
        return stream, raw

    def datagram_filters(self):
        return [f for stack in self.stacks for f in stack.datagram_filters()]

    # ------------------------------------------------------------ the kernel's hooks
    @property
    def kernel_updates(self):
        return [update for stack in self.stacks for update in stack.kernel_updates]

    @kernel_updates.setter
    def kernel_updates(self, value):
        if value:
            raise ValueError("kernel updates are queued by the contexts' stacks")
        for stack in self.stacks:
            stack.kernel_updates = []

    def _set_all(name):
        def setter(self, value):
            for stack in self.stacks:
                setattr(stack, name, value)
        return property(lambda self: getattr(self.stacks[0], name), setter)

    on_flow_end = _set_all("on_flow_end")
    kernel_sync = _set_all("kernel_sync")
    wall_offset_us = _set_all("wall_offset_us")
    acks_on_wire = _set_all("acks_on_wire")
    state_only = _set_all("state_only")
    del _set_all


class GroupContext:
    """Where the engines take an mctx: the contexts' common configuration, the group as
    ``stack``, and ``engine`` set on every context (mtcp_bind_monitor_filter tells it)."""

    def __init__(self, contexts):
        self.contexts = list(contexts)
        self.config = self.contexts[0].config
        self.stack = ContextGroup(mctx.stack for mctx in self.contexts)
        # The runtime's outputs, which its contexts share (None for contexts without).
        self.outputs = getattr(self.contexts[0], "outputs", None)

    @property
    def engine(self):
        return self.contexts[0].engine

    @engine.setter
    def engine(self, value):
        for mctx in self.contexts:
            mctx.engine = value
