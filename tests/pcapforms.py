"""A classic pcap file (little-endian microseconds) rewritten in another byte order and
timestamp resolution: the same frames and times, as tcpdump writes them on a big-endian
host or with --time-stamp-precision=nano."""
import struct


def rewritten(src, dst, order, nanosecond):
    """``src`` as a capture of byte order ``order`` ("<" or ">"), in nanoseconds when
    ``nanosecond``; written to ``dst`` (a Path), which is returned."""
    with open(src, "rb") as f:
        data = f.read()
    head = struct.unpack_from("<IHHiIII", data)
    out = [struct.pack(order + "IHHiIII", 0xA1B23C4D if nanosecond else 0xA1B2C3D4, *head[1:])]
    off = 24
    while off < len(data):
        sec, frac, caplen, origlen = struct.unpack_from("<IIII", data, off)
        out.append(struct.pack(order + "IIII", sec, frac * 1000 if nanosecond else frac,
                               caplen, origlen) + data[off + 16:off + 16 + caplen])
        off += 16 + caplen
    dst.write_bytes(b"".join(out))
    return dst
