"""What a live run lost, and why: frames that never reached Python, or never left.

One place names the reasons, for the status line, the loss warning, the exit summary,
``--stats-json`` and the Prometheus endpoint. Every count comes from counters that the
kernel or the engine keep anyway:

* the kernel's ``XDP_STATISTICS`` of each AF_XDP socket (``XskSocket.xdp_statistics``,
  the ``kernel_*`` keys of a socket's stats, what ``ss --xdp -e`` prints);
* the XDP program's ``xsk_redirect_other`` and ``forward_redirect_err`` (counted by its
  tracepoint program on ``xdp_redirect_err``), and ``observe_lost`` (observe-only copies
  that found the ring buffer full);
* the engine's counters (``tx_ring_full_dropped``, ``outbox_dropped``,
  ``replaced_dropped``);
* the monitored interfaces' ``tx_dropped`` since the start (``/sys/class/net/IF/statistics``):
  frames their drivers dropped on transmit, sent by the monitor's AF_XDP sockets or
  forwarded by the kernel (a copy-mode ``sendto`` says EBUSY for such a frame, which
  still completes; a ``poll`` that transmits does not say it).

In copy mode a frame that finds the fill ring empty is counted by the kernel both in
``rx_fill_ring_empty_descs`` and in ``rx_dropped`` (which also counts frames larger than
a UMEM frame): ``rx_dropped_other`` is the difference. In zero-copy mode the driver
allocates from the fill ring before frames arrive; there ``fill_ring_empty`` counts its
failed allocations (the frames the NIC then drops are in its own counters) and every
``rx_dropped`` is another reason.
"""
from __future__ import annotations

#: reason -> what it means (the order of the status line and the summary)
REASONS = {
    "fill_ring_empty": "no free UMEM frame on the socket's fill ring (Python is behind)",
    "rx_ring_full": "the socket's RX ring was full (Python is behind)",
    "rx_dropped_other": "refused by the socket otherwise (a frame larger than a UMEM frame)",
    "xsk_redirect_error": "the socket refused the redirect (not bound, bound to another queue)",
    "observe_lost": "observe-only: the copy found the ring buffer full (Python is behind; the frame went on)",
    "forward_redirect_error": "the kernel could not forward to the peer (peer down, frame too large)",
    "tx_ring_full": "forwarded by Python, but the peer's TX ring was full",
    "tx_invalid": "TX descriptors the kernel refused",
    "tx_device_drop": "dropped on transmit by a monitored interface (its tx_dropped)",
    "outbox_dropped": "frames the apps sent that found no UMEM frame or TX room",
    "replaced_dropped": "parts of a segment an app resized that found no UMEM frame",
    "tx_unsent_at_exit": "still on a TX ring when the run ended",
}
#: the reasons of frames on their way to Python
BEFORE_PYTHON = ("fill_ring_empty", "rx_ring_full", "rx_dropped_other", "xsk_redirect_error",
                 "observe_lost")


def lost_frames(counters: dict, sockets: list[dict], xdp: dict | None, *,
                zero_copy: bool = False, device_tx_dropped: int = 0) -> dict[str, int]:
    """Lost frames by reason (every reason of REASONS but ``tx_unsent_at_exit``, which
    only the end of a run knows): from the engine's ``counters``, its sockets' stats
    (``XskSocket.stats``), the program's counters ``xdp`` (None or {} without
    mosxdp's program) and the monitored interfaces' tx_dropped since the start."""
    def total(key):
        return sum(s.get(key, 0) for s in sockets)
    xdp = xdp or {}
    fill_empty = total("kernel_rx_fill_ring_empty_descs")
    dropped = total("kernel_rx_dropped")
    return {
        "fill_ring_empty": fill_empty,
        "rx_ring_full": total("kernel_rx_ring_full"),
        "rx_dropped_other": dropped if zero_copy else max(dropped - fill_empty, 0),
        "xsk_redirect_error": xdp.get("xsk_redirect_other", 0),
        "observe_lost": xdp.get("observe_lost", 0),
        "forward_redirect_error": xdp.get("forward_redirect_err", 0),
        "tx_ring_full": counters.get("tx_ring_full_dropped", 0),
        "tx_invalid": total("kernel_tx_invalid_descs"),
        "tx_device_drop": device_tx_dropped,
        "outbox_dropped": counters.get("outbox_dropped", 0),
        "replaced_dropped": counters.get("replaced_dropped", 0),
    }


def loss_share(lost: dict[str, int], frames_in: int) -> tuple[float, int]:
    """(share, seen): the frames ``lost`` (by reason) as a share of the frames that came
    the monitor's way, ``seen``: read by Python (``frames_in``) or lost before it. A frame
    lost after Python read it (at transmit) is in ``frames_in`` already; without any
    frame seen, a loss is all of it."""
    total = sum(v for k, v in lost.items() if k in REASONS)
    seen = frames_in + sum(lost.get(k, 0) for k in BEFORE_PYTHON)
    if not seen:
        return (1.0 if total else 0.0), 0
    return min(total / seen, 1.0), seen


def reasons_text(lost: dict[str, int]) -> str:
    """'fill ring empty 26990, rx ring full 10': the reasons that counted, in order."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in lost.items() if v and k in REASONS)


def loss_line(lost: dict[str, int], frames_in: int) -> str:
    """The exit summary's line: every frame lost in the run, by reason."""
    total = sum(v for k, v in lost.items() if k in REASONS)
    if not total:
        return "mosxdp: lost 0 frames"
    share, seen = loss_share(lost, frames_in)
    of = f" ({100.0 * share:.1f}% of the {seen} read or lost before Python)" if seen else ""
    return f"mosxdp: lost {total} frames{of}: {reasons_text(lost)}"
