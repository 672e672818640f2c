# Compiled declarations of packet.py (setup.py): Packet as an extension type whose fields
# are C struct members holding Python objects (reads and writes without a dict or
# descriptor lookup in this module), and parse_frame's Packet typed.
import cython

cdef class Packet:
    cdef public object buf, frame_len, vlan_ids, l3_off, ip_version, ip_proto, src, dst, ip_len
    cdef public object is_fragment, l4_off, sport, dport, seq, ack, flags, window, urgent
    cdef public object tcp_hdr_len, payload_off, payload_len
    cdef public object _mss, _wscale, _sack_ok, _ts_val, _ts_ecr, _bad_options

@cython.locals(pkt=Packet)
cpdef parse_frame(buf)

@cython.locals(pkt=Packet)
cdef _clear_l4(Packet pkt)

from cpython.buffer cimport Py_buffer

@cython.locals(pkt=Packet, view=Py_buffer, b=cython.p_uchar, flags=cython.uchar,
               ip_len=Py_ssize_t, tcp_hdr_len=Py_ssize_t, ip_end=Py_ssize_t)
cdef _parse_tcp_ipv4(buf, Py_ssize_t frame_len)
