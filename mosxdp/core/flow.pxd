# Compiled declarations of flow.py (setup.py): Side and Flow as extension types whose
# fields are C members holding Python objects.
cdef class Side:
    cdef public object state, isn, snd_nxt, fin_seq, fin_acked, wscale, syn_seen
    cdef public object peer_base, rcv_nxt, buf, bufsize, policy, right_edge
    cdef public object peer_fin_off, fin_received, unique_bytes, max_end, first_payload_seen
    cdef public object pkts, ip_bytes, l2_bytes, tcp_flags, history_bits, l2_header, port
    cdef public object bypassed_bytes, bypassed_pkts, bypassed_l2_bytes, beyond_edge, last_pkt
    cdef public object skip_to, skip_due, mss, rexmit, carried_end, flush_mark

cdef class Flow:
    cdef public object keys, ip_version, vlan_ids, addrs, ports_tcp, sides, socks
    cdef public object start_ts, last_ts, history, end_reason, pending_data, bypass
    cdef public object rst_seen, tw_deadline, window_scaled, window_known
    cdef public object destroyed, midstream, kernel_verdict, masks, masks_epoch, edits
    cdef public object last_no, tw_no, data_no, fast_forward, ff_record, pkt_listed, ff_wait
