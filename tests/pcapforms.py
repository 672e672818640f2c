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


def _records(src):
    """(ts_us, caplen, origlen, frame) of each record of a little-endian microsecond
    classic pcap."""
    with open(src, "rb") as f:
        data = f.read()
    off = 24
    while off + 16 <= len(data):
        sec, usec, caplen, origlen = struct.unpack_from("<IIII", data, off)
        yield sec * 1_000_000 + usec, caplen, origlen, data[off + 16:off + 16 + caplen]
        off += 16 + caplen


def _block(order, btype, body):
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def _option(order, code, value):
    return struct.pack(order + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def section(order):
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def interface(order, linktype=1, tsresol=6, tsoffset=0):
    """An interface block; ``tsresol`` as if_tsresol's byte (6: microseconds, 9:
    nanoseconds, 0x80 | n: 2^-n seconds), ``tsoffset`` in seconds."""
    opts = _option(order, 9, bytes([tsresol]))
    if tsoffset:
        opts += _option(order, 14, struct.pack(order + "q", tsoffset))
    opts += _option(order, 0, b"")
    return _block(order, 1, struct.pack(order + "HHI", linktype, 0, 0) + opts)


def _units(ts_us, tsresol, tsoffset):
    """The raw timestamp that reads back as ``ts_us`` (a whole number of units)."""
    us = ts_us - tsoffset * 1_000_000
    if tsresol & 0x80:
        return (us << (tsresol & 0x7F)) // 1_000_000 + 1     # rounds down to us on the way back
    return us * 10 ** (tsresol - 6) if tsresol >= 6 else us // 10 ** (6 - tsresol)


def packet(order, ifid, raw, caplen, origlen, frame):
    return _block(order, 6, struct.pack(order + "IIIII", ifid, raw >> 32, raw & 0xFFFFFFFF,
                                        caplen, origlen) + frame)


def _cooked(caplen, origlen, frame):
    """An Ethernet frame as Linux cooked (SLL) captures it: the same packet after a
    16-byte header (sent by us, the source address, the EtherType)."""
    header = struct.pack(">HHH", 4, 1, 6) + frame[6:12] + b"\0\0" + frame[12:14]
    return caplen + 2, origlen + 2, header + frame[14:]


def as_pcapng(src, dst, order="<", tsresol=6, tsoffset=0, sections=1, extra_blocks=True,
              cooked=()):
    """``src`` (a little-endian microsecond classic pcap of Ethernet frames) as a pcapng
    file of byte order ``order``, its records split over ``sections`` sections, each with
    two interfaces used in turn (Ethernet, or Linux cooked for those in ``cooked``: 0, 1),
    with name resolution, statistics and custom blocks between the packets when
    ``extra_blocks`` (the reader skips them). The timestamps are those of ``src`` when
    ``tsresol`` is decimal; a binary resolution reads back within a microsecond. Written
    to ``dst`` (a Path), which is returned."""
    records = list(_records(src))
    per = -(-len(records) // sections) if records else 1
    out = []
    for k in range(max(1, sections)):
        out.append(section(order))
        for ifid in (0, 1):
            out.append(interface(order, 113 if ifid in cooked else 1, tsresol, tsoffset))
        for i, (ts, caplen, origlen, frame) in enumerate(records[k * per:(k + 1) * per]):
            if i % 2 in cooked:
                caplen, origlen, frame = _cooked(caplen, origlen, frame)
            out.append(packet(order, i % 2, _units(ts, tsresol, tsoffset), caplen, origlen,
                              frame))
            if extra_blocks and i % 7 == 3:
                out.append(_block(order, 4, _option(order, 1, b"\x0a\x00\x00\x01host\x00")
                                  + _option(order, 0, b"")))        # name resolution
                out.append(_block(order, 5, struct.pack(order + "III", i % 2, 0, 0)))
                out.append(_block(order, 0xBAD, b"custom"))
    dst.write_bytes(b"".join(out))
    return dst


def as_modified_pcap(src, dst):
    """``src`` as a "modified" (Kuznetzov) pcap: 24-byte record headers."""
    out = [struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)]
    for ts, caplen, origlen, frame in _records(src):
        sec, usec = divmod(ts, 1_000_000)
        out.append(struct.pack("<IIIIIHBx", sec, usec, caplen, origlen, 0, 0, 0) + frame)
    dst.write_bytes(b"".join(out))
    return dst
