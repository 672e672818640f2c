# Compiled declarations of stack_state.py (setup.py): the per-frame attributes of a Stack
# as C fields. Set by Stack.__init__ and its parts' _init_* methods.
cdef class StackState:
    # The frame being processed (events.py, stack.py) and the clock.
    cdef public object now, frame_no, cur_pkt, cur_frame, cur_flow, cur_drop, cur_edit, cut_pkt
    # The callback being run (events.py): its socket, hook and side, what it gets as mctx.
    cdef public object cur_sock, cur_hook, cur_side, handle, registry
    # Tables every TCP segment looks up (flow.py, sockets.py, datagrams.py).
    cdef public object flows, lru, half_open, raw_sockets, mask_epoch, datagrams, kernel_sync
    cdef public object ff_catch_up, ff_reload, pkt_flows
    # Stop requests (events.py), counters, the batch's flows with new data (streams.py).
    cdef public object _exit_work, _stop_requested, _counters, new_data_flows
    cdef public long long tcp_segments
