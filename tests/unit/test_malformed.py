"""Malformed frames, one test per kind (docs/config.md "Malformed frames"), offline.

Each malformed frame goes through the offline engine between the frames of a valid
connection: it is counted by kind, never crashes anything, and is forwarded unchanged (the
output, what inline mode transmits, is byte-identical to the input), and the connection
around it is still monitored completely. The last test does the same through the command
line with --write and --stats.
"""
import socket
import struct

import pytest

from flowcraft import Monitor, api  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403
from mosxdp import cli
from mosxdp.core.frames import build_tcp_frame
from mosxdp.core.packet import PACKET_ERROR_COUNTERS
from mosxdp.io.pcap import PcapReader, PcapWriter

MAC_C, MAC_S = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
V6 = (bytes.fromhex("fd000000000000000000000000000001"),
      bytes.fromhex("fd000000000000000000000000000002"))
SYN, ACK, PSH_ACK, FIN_ACK = 0x02, 0x10, 0x18, 0x11
ISN_C, ISN_S = 1000, 5000
ETH, IP4, IP6, TCP_LEN = 14, 20, 40, 20
EXT_HBH, EXT_ROUTING, EXT_FRAGMENT, EXT_DSTOPTS = 0, 43, 44, 60


def seg(frm, flags, seq, ack, payload=b"", addrs=V4, sport=40000, options=b""):
    src, dst = addrs if frm == "c" else addrs[::-1]
    macs = (MAC_S, MAC_C) if frm == "c" else (MAC_C, MAC_S)
    ports = (sport, 80) if frm == "c" else (80, sport)
    return bytes(build_tcp_frame(*macs, src, dst, *ports, seq, ack, flags, 65535, payload,
                                 options=options))


def conversation(addrs=V4, request=b"GET / HTTP/1.0\r\n\r\n", response=b"HTTP/1.0 200 OK\r\n\r\nhi",
                 syn_options=b"\x02\x04\x05\xb4"):
    """A complete connection as frames, and a function that makes a data segment of the
    client at a given stream offset (for malformed variants of a real segment)."""
    c, s = ISN_C + 1, ISN_S + 1
    frames = [seg("c", SYN, ISN_C, 0, addrs=addrs, options=syn_options),
              seg("s", SYN | ACK, ISN_S, c, addrs=addrs, options=b"\x02\x04\x05\xb4"),
              seg("c", ACK, c, s, addrs=addrs),
              seg("c", PSH_ACK, c, s, request, addrs=addrs)]
    c += len(request)
    frames += [seg("s", PSH_ACK, s, c, response, addrs=addrs)]
    s += len(response)
    frames += [seg("c", FIN_ACK, c, s, addrs=addrs), seg("s", FIN_ACK, s, c + 1, addrs=addrs),
               seg("c", ACK, c + 1, s + 1, addrs=addrs)]
    return frames


def put16(frame, off, value):
    frame = bytearray(frame)
    struct.pack_into("!H", frame, off, value)
    return bytes(frame)


def with_ipv6_extensions(frame, headers):
    """Insert IPv6 extension headers [(type, body bytes)] before the upper layer; each
    header is padded to a multiple of 8 bytes (the length field says so)."""
    frame = bytearray(frame)
    upper = frame[ETH + 6]
    chain = b""
    types = [t for t, _ in headers]
    for index, (kind, body) in enumerate(headers):
        following = types[index + 1] if index + 1 < len(types) else upper
        raw = bytes([following, 0]) + body
        raw += b"\0" * (-len(raw) % 8)
        if kind == EXT_FRAGMENT:
            raw = bytes([following, 0]) + body[:6].ljust(6, b"\0")
        else:
            raw = raw[:1] + bytes([len(raw) // 8 - 1]) + raw[2:]
        chain += raw
    frame[ETH + 6] = types[0]
    struct.pack_into("!H", frame, ETH + 4, struct.unpack_from("!H", frame, ETH + 4)[0] + len(chain))
    return bytes(frame[:ETH + IP6] + chain + frame[ETH + IP6:])


class Run:
    """The frames through the offline engine with a stream listener and a raw socket."""

    def __init__(self, frames):
        self.mon = Monitor(domain=socket.AF_UNSPEC)
        mctx = self.mon.mctx
        self.streams = {}
        self.raw_seen = 0
        self.ends = 0

        def at_end(mctx, sock, side, ev, arg):
            self.ends += 1
            buf = bytearray(1 << 16)
            try:
                self.streams[side] = bytes(buf[:mtcp_ppeek(mctx, sock, side, buf, len(buf), 0)])
            except OSError:
                self.streams[side] = b""
        mtcp_register_callback(mctx, self.mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, at_end)
        raw = mtcp_socket(mctx, 0, MOS_SOCK_MONITOR_RAW, 0)

        def on_raw(mctx, sock, side, ev, arg):
            self.raw_seen += 1
        mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, on_raw)
        self.frames = [(1_000_000 + i * 1000, f) for i, f in enumerate(frames)]
        self.out = self.mon.run(self.frames)
        self.stack = mctx.stack
        self.counters = self.stack.counters

    def forwarded_unchanged(self):
        return self.out == self.frames


def run_with(bad, insert_at=4, **conv):
    """A conversation with `bad` inserted at a position (after the handshake by default)."""
    frames = conversation(**conv)
    bads = bad if isinstance(bad, list) else [bad]
    return Run(frames[:insert_at] + bads + frames[insert_at:])


def assert_counted(run, kind, count=1):
    assert run.stack.malformed == {kind: count}
    assert run.counters["malformed"] == count
    assert run.counters["callback_errors"] == 0
    assert run.forwarded_unchanged()
    # The connection around the malformed frames is monitored completely.
    assert run.streams == {MOS_SIDE_SVR: b"GET / HTTP/1.0\r\n\r\n",
                           MOS_SIDE_CLI: b"HTTP/1.0 200 OK\r\n\r\nhi"}
    assert run.counters["flows_created"] == run.counters["flows_ended"] == 1


def data_frame(addrs=V4, payload=b"GET / HTTP/1.0\r\n\r\n"):
    """The client's request segment (a valid frame to break)."""
    return conversation(addrs=addrs)[3]


# ------------------------------------------------------------------- too short
@pytest.mark.parametrize("length", [0, 1, 13])
def test_frame_shorter_than_ethernet(api, length):
    assert_counted(run_with(data_frame()[:length]), "truncated_l2")


def test_zero_length_frame(api):
    assert_counted(run_with([b"", b""]), "truncated_l2", 2)


def test_vlan_tag_cut_short(api):
    frame = data_frame()
    assert_counted(run_with(frame[:12] + b"\x81\x00\x00"), "truncated_vlan")


@pytest.mark.parametrize("length", [ETH, ETH + 1, ETH + IP4 - 1])
def test_frame_shorter_than_ipv4_header(api, length):
    assert_counted(run_with(data_frame()[:length]), "truncated_ipv4")


@pytest.mark.parametrize("length", [ETH, ETH + IP6 - 1])
def test_frame_shorter_than_ipv6_header(api, length):
    frame = conversation(addrs=V6)[3]
    run = run_with(frame[:length], addrs=V6)
    assert_counted(run, "truncated_ipv6")


def test_ip_packet_shorter_than_tcp_header(api):
    frame = data_frame()
    cut = put16(frame, ETH + 2, IP4 + 10)[:ETH + IP4 + 10]
    assert_counted(run_with(cut), "truncated_tcp")


def test_ip_packet_shorter_than_udp_header(api):
    frame = bytearray(data_frame())
    frame[ETH + 9] = 17                         # UDP
    cut = put16(bytes(frame), ETH + 2, IP4 + 4)[:ETH + IP4 + 4]
    assert_counted(run_with(cut), "truncated_udp")


# ------------------------------------------------------------------ IPv4 header
@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_ihl_below_5(api, ihl):
    frame = bytearray(data_frame())
    frame[ETH] = 0x40 | ihl
    assert_counted(run_with(bytes(frame)), "ipv4_ihl")


def test_ip_version_does_not_match_ethertype(api):
    frame = bytearray(data_frame())
    frame[ETH] = 0x65
    assert_counted(run_with(bytes(frame)), "ip_version")


@pytest.mark.parametrize("extra", [1, 100, 0xFFFF])
def test_ipv4_total_length_larger_than_the_frame(api, extra):
    frame = data_frame()
    total = min(len(frame) - ETH + extra, 0xFFFF)
    assert_counted(run_with(put16(frame, ETH + 2, total)), "truncated_ipv4")


@pytest.mark.parametrize("total", [1, 19])
def test_ipv4_total_length_smaller_than_its_header(api, total):
    assert_counted(run_with(put16(data_frame(), ETH + 2, total)), "ipv4_total_length")


def test_ipv4_total_length_zero_is_a_tso_segment_of_the_whole_frame(api):
    # A capture taken before TSO cut the segment: total length 0, the packet is the rest of
    # the frame (as Wireshark reads it); the frame goes out unchanged.
    run = run_with(put16(data_frame(), ETH + 2, 0))
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == b"GET / HTTP/1.0\r\n\r\n"


def test_ipv4_total_length_smaller_than_the_frame_is_padding(api):
    # Bytes beyond the IP total length are Ethernet padding: the segment is processed
    # with the IP length, the padding is not payload, and the frame goes out unchanged.
    frames = conversation()
    frames[3] = frames[3] + b"PADDING-NOT-PAYLOAD"
    run = Run(frames)
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == b"GET / HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x2010, 0x1FFF])   # MF, offsets
def test_ipv4_fragments_are_counted_and_forwarded(api, frag):
    frame = put16(data_frame(), ETH + 6, frag)
    run = run_with(frame)
    assert run.counters["ip_fragments"] == 1 and run.raw_seen >= 1
    assert run.stack.malformed == {} and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == b"GET / HTTP/1.0\r\n\r\n"


# -------------------------------------------------------------------- TCP header
@pytest.mark.parametrize("doff", [0, 1, 4])
def test_tcp_data_offset_below_5(api, doff):
    frame = bytearray(data_frame())
    frame[ETH + IP4 + 12] = doff << 4
    assert_counted(run_with(bytes(frame)), "tcp_doff")


@pytest.mark.parametrize("doff", [10, 15])
def test_tcp_data_offset_beyond_the_packet(api, doff):
    frame = bytearray(seg("c", PSH_ACK, ISN_C + 1, ISN_S + 1, b"abc"))  # 23 bytes of TCP
    frame[ETH + IP4 + 12] = doff << 4
    assert_counted(run_with(bytes(frame)), "truncated_tcp")


@pytest.mark.parametrize("options", [
    b"\x01\x01\x01\x02",                 # MSS cut by the end of the header
    b"\x08\x30" + b"\0" * 6,             # timestamp whose length runs past the header
    b"\x03\x01\x07\x00",                 # length 1 < 2
    b"\x01\x01\x05\xff",                 # SACK whose length runs past the header
])
def test_tcp_option_length_past_the_header(api, options):
    # On a SYN the options are read: the walk stops (as Linux), the SYN counts, the flow
    # is monitored. Not a malformed frame: the segment is valid.
    run = Run(conversation(syn_options=options))
    assert run.counters["bad_tcp_options"] == 1
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == b"GET / HTTP/1.0\r\n\r\n"


def test_tcp_option_length_past_the_header_on_a_data_segment(api):
    # Options of non-SYN segments are never read: the data is delivered.
    frames = conversation()
    request = b"GET / HTTP/1.0\r\n\r\n"
    frames[3] = seg("c", PSH_ACK, ISN_C + 1, ISN_S + 1, request, options=b"\x08\x30\0\0")
    run = Run(frames)
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == request


# ------------------------------------------------------------------- IPv6 chains
def test_ipv6_payload_length_larger_than_the_frame(api):
    frame = conversation(addrs=V6)[3]
    run = run_with(put16(frame, ETH + 4, 2000), addrs=V6)
    assert_counted(run, "truncated_ipv6")


def test_ipv6_extension_chain_to_tcp_is_monitored(api):
    chain = [(EXT_HBH, b"\x01\x04\0\0\0\0"), (EXT_DSTOPTS, b"\x01\x04\0\0\0\0"),
             (EXT_ROUTING, b"\0\0" + b"\0" * 4), (EXT_DSTOPTS, b"\x01\x0c" + b"\0" * 12)]
    frames = [with_ipv6_extensions(f, chain) for f in conversation(addrs=V6)]
    run = Run(frames)
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams == {MOS_SIDE_SVR: b"GET / HTTP/1.0\r\n\r\n",
                           MOS_SIDE_CLI: b"HTTP/1.0 200 OK\r\n\r\nhi"}


@pytest.mark.parametrize("cut", [1, 8])
def test_ipv6_extension_header_cut_short(api, cut):
    frame = with_ipv6_extensions(conversation(addrs=V6)[3], [(EXT_DSTOPTS, b"\x01\x0c" + b"\0" * 12)])
    # The IPv6 payload ends inside the extension header.
    short = put16(frame, ETH + 4, cut)[:ETH + IP6 + cut]
    assert_counted(run_with(short, addrs=V6), "truncated_ipv6_ext")


def test_ipv6_extension_header_longer_than_the_packet(api):
    frame = bytearray(with_ipv6_extensions(conversation(addrs=V6)[3],
                                           [(EXT_DSTOPTS, b"\x01\x04\0\0\0\0")]))
    frame[ETH + IP6 + 1] = 200                  # (200 + 1) * 8 bytes
    assert_counted(run_with(bytes(frame), addrs=V6), "truncated_ipv6_ext")


def test_ipv6_hop_by_hop_not_first(api):
    frame = with_ipv6_extensions(conversation(addrs=V6)[3],
                                 [(EXT_DSTOPTS, b"\x01\x04\0\0\0\0"), (EXT_HBH, b"\x01\x04\0\0\0\0")])
    assert_counted(run_with(frame, addrs=V6), "ipv6_hbh_position")


def test_ipv6_long_extension_chain(api):
    # 30 destination options headers: walked to the end, the segment is monitored.
    frames = conversation(addrs=V6)
    chain = [(EXT_DSTOPTS, b"\x01\x04\0\0\0\0")] * 30
    frames = [with_ipv6_extensions(f, chain) for f in frames]
    run = Run(frames)
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == b"GET / HTTP/1.0\r\n\r\n"


@pytest.mark.parametrize("offset_flags", [0x0001, 0x0008, 0x0009])   # M, offset 1, both
def test_ipv6_fragments_are_counted_and_forwarded(api, offset_flags):
    frame = with_ipv6_extensions(conversation(addrs=V6)[3],
                                 [(EXT_FRAGMENT, struct.pack("!HI", offset_flags, 7))])
    run = run_with(frame, addrs=V6)
    assert run.counters["ip_fragments"] == 1 and run.stack.malformed == {}
    assert run.forwarded_unchanged()


# -------------------------------------------------------------------- big frames
def test_frame_larger_than_the_umem_frame_is_processed(api):
    request = bytes(range(256)) * 36               # 9216 bytes: a jumbo frame of 9270
    frames = conversation(request=request)
    assert len(frames[3]) > 4096
    run = Run(frames)
    assert run.counters["malformed"] == 0 and run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == request


def test_largest_ip_packet(api):
    request = b"x" * (0xFFFF - IP4 - TCP_LEN)
    run = Run(conversation(request=request))
    assert run.forwarded_unchanged()
    assert run.streams[MOS_SIDE_SVR] == request


def test_every_parser_counter_has_a_test():
    names = {name for name in globals() if name.startswith("test_")}
    tested = {"truncated_l2", "truncated_vlan", "truncated_ipv4", "truncated_ipv6",
              "truncated_ipv6_ext", "truncated_tcp", "truncated_udp", "ip_version",
              "ipv4_ihl", "ipv4_total_length", "ipv6_hbh_position", "tcp_doff"}
    assert set(PACKET_ERROR_COUNTERS) == tested and len(names) > 20


# ---------------------------------------------------------- through the command line
def test_cli_write_output_is_byte_identical_and_stats_count_each_kind(api, tmp_path, capsys):
    good = conversation()
    v6 = conversation(addrs=V6)
    bad = [
        b"", good[3][:13], good[3][:12] + b"\x81\x00\x00", good[3][:ETH + 10],
        bytes([*good[3][:ETH], 0x44, *good[3][ETH + 1:]]),
        put16(good[3], ETH + 2, 9000), put16(good[3], ETH + 2, 10),
        put16(good[3], ETH + 6, 0x2000),
        v6[3][:ETH + 20],
        with_ipv6_extensions(v6[3], [(EXT_DSTOPTS, b"\x01\x04\0\0\0\0"),
                                     (EXT_HBH, b"\x01\x04\0\0\0\0")]),
    ]
    doff = bytearray(good[3])
    doff[ETH + IP4 + 12] = 0x30
    bad.append(bytes(doff))
    largest = seg("c", PSH_ACK, ISN_C + 1, ISN_S + 1, b"\0" * (0xFFFF - IP4 - TCP_LEN))
    assert len(largest) > 65535                  # a whole frame, not cut by a snap length
    bad.append(largest)
    frames = good[:4] + bad + good[4:]
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    with PcapWriter(str(src), snaplen=262144) as writer:
        for i, frame in enumerate(frames):
            writer.write(1_000_000 + i, frame)
    mtcp_destroy()
    code = cli.main(["run", "flowdump", "--pcap", str(src), "--write", str(out),
                     "--outdir", str(tmp_path / "flows"), "--stats"])
    err = capsys.readouterr().err
    assert code == 0
    with PcapReader(str(src)) as a, PcapReader(str(out)) as b:
        assert [(ts, bytes(f)) for ts, f in a] == [(ts, bytes(f)) for ts, f in b]
    for kind, count in (("truncated_l2", 2), ("truncated_vlan", 1), ("truncated_ipv4", 2),
                        ("ipv4_ihl", 1), ("ipv4_total_length", 1), ("truncated_ipv6", 1),
                        ("ipv6_hbh_position", 1), ("tcp_doff", 1)):
        assert f"{kind} {count}" in err
    assert "malformed 10 (" in err and "ip fragments 1" in err
    # The largest segment starts at the request's offset: the request's bytes stay (FIRST),
    # the rest of it extends the stream.
    request = b"GET / HTTP/1.0\r\n\r\n"
    assert (tmp_path / "flows" / "010.000.000.001.40000-010.000.000.002.00080").read_bytes() == \
        request + b"\0" * (0xFFFF - IP4 - TCP_LEN - len(request))
