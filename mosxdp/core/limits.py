"""Resource limits of the core: what a hostile sender can make the monitor hold.

Every limit has a configuration key (StackConfig, [mos] in the configuration file, see
docs/config.md) and a counter in ``Stack.counters`` that moves when it triggers:

  limit                          key                 counter(s)
  -----------------------------  ------------------  ---------------------------------------
  flows tracked at once          max_concurrency     flows_evicted (half_open_evicted of them)
  reassembly window per side     rmem_size           buffer_overruns (bytes not yet peeked lost)
  all reassembly buffers         reassembly_memcap   memcap_refused
  handshake never completes      tcp_syn_timeout     half_open_timeouts
  out-of-order runs per side     max_fragments       refused_fragments

A flow is *half-open* from its SYN until the server side leaves LISTEN/SYN_RCVD (the
client's ACK of the SYN-ACK, or anything later): a spoofed SYN never gets there.
``Stack.half_open`` orders these flows by last activity, like ``Stack.lru`` orders all
flows, so timing them out and picking an eviction victim cost O(1) per flow.

Eviction (a new flow while ``max_concurrency`` flows are tracked): the least recently
active half-open flow if there is one, else the least recently active flow. A SYN flood
therefore only ever evicts its own flows while established ones stay.

Reassembly memory: a side's StreamBuffer is allocated at its first payload byte; its
capacity is charged to ``Stack.reassembly_mem`` from then until its flow ends. When the
charge would exceed ``reassembly_memcap`` the side runs without a buffer (as with buffering
off: state, events and counters go on, mtcp_peek/ppeek say EINVAL), its sockets get
SO_ERROR ENOMEM and MOS_ON_ERROR, and ``memcap_refused`` counts it.

Sans-IO: functions over a Stack, no imports of it (stack.py imports this module).
"""
import errno

from . import tcp

# Counters this module adds to Stack.counters (all start at 0).
LIMIT_COUNTERS = (
    "half_open_evicted", "half_open_timeouts", "memcap_refused", "refused_fragments",
    "bad_tcp_options", "urgent_data",
)

# Server-side states of a flow whose handshake has not completed.
HALF_OPEN_STATES = frozenset((tcp.LISTEN, tcp.SYN_RCVD))

DEFAULT_REASSEMBLY_MEMCAP = 1 << 30   # bytes over all stream buffers (4096 of 256 KiB)
DEFAULT_TCP_SYN_TIMEOUT = 5.0         # idle seconds of a half-open flow


def evict_one(stack):
    """Make room for one flow: end the least recently active half-open flow, else the
    least recently active flow (end_reason 'evicted')."""
    if stack.half_open:
        victim = next(iter(stack.half_open))
        stack.counters["half_open_evicted"] += 1
    else:
        victim = next(iter(stack.lru))
    stack.counters["flows_evicted"] += 1
    stack.destroy_flow(victim, "evicted")


def handshake_progress(stack, flow):
    """After a packet of a half-open flow: it leaves the set once the server side is past
    SYN_RCVD."""
    if flow.sides[1].state not in HALF_OPEN_STATES:
        stack.half_open.pop(flow, None)


def expire_half_open(stack, now):
    """End half-open flows idle for tcp_syn_timeout seconds (end_reason 'timeout')."""
    limit = now - int(stack.config.tcp_syn_timeout * 1e6)
    half_open = stack.half_open
    sync = stack.kernel_sync
    while half_open:
        flow = next(iter(half_open))
        if flow.last_ts > limit:
            break
        if flow.kernel_verdict is not None and sync is not None:
            # Idle here, maybe busy in the kernel: its last-seen time decides.
            sync(flow)
            if flow.last_ts > limit:
                half_open.move_to_end(flow)
                continue
        stack.counters["half_open_timeouts"] += 1
        stack.destroy_flow(flow, "timeout")


def reserve_buffer(stack, flow, rcv):
    """Charge a new stream buffer of rcv.bufsize bytes to the reassembly memcap.

    Returns True when it fits. Otherwise the side's buffering is turned off
    (rcv.bufsize = 0), its sockets get SO_ERROR ENOMEM, and False is returned: the
    caller raises MOS_ON_ERROR."""
    size = rcv.bufsize
    cap = stack.config.reassembly_memcap
    if cap and stack.reassembly_mem + size > cap:
        stack.counters["memcap_refused"] += 1
        rcv.bufsize = 0
        for sock in flow.socks:
            sock.so_error = errno.ENOMEM
        return False
    stack.buffer_mem[flow] = stack.buffer_mem.get(flow, 0) + size
    stack.reassembly_mem += size
    if stack.reassembly_mem > stack.reassembly_mem_peak:
        stack.reassembly_mem_peak = stack.reassembly_mem
    return True


def forget_flow(stack, flow):
    """A flow ends: it is no longer half-open and its buffers' memory is free."""
    stack.half_open.pop(flow, None)
    charged = stack.buffer_mem.pop(flow, 0)
    if charged:
        stack.reassembly_mem -= charged
