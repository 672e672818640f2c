"""Many short flows (scripts/bench.py --make-capture OUT --short-flows N: web-like flows of
8 frames, 64 open at once), where the cost is per flow: none of them is long enough to be
fast-forwarded (docs/datapath.md, "When it begins"), so the core sees every frame, and the
per-flow path (a flow's start and end, conn.log's record) is what runs. connlog's records
are checked against what the capture holds and against tshark's conversations, and against
--full-inspection line for line; flowdump's files against tcpflow's.
"""
import importlib.util

from integ_helpers import REPO, cached, connlog, flowdump, tcpflow, tmpdir, tshark_conv

FLOWS = 300
REQUEST = len(b"GET /%08d HTTP/1.1\r\nHost: x\r\n\r\n" % 0)
RESPONSE = len(b"HTTP/1.1 200 OK\r\nContent-Length: 610\r\n\r\n") + 610


def _short_flows():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmpdir("short") / "short.pcap"
    bench.make_short_flows(str(path), FLOWS)
    return path


def short_flows():
    return cached("short-flows", _short_flows).result()


def test_connlog_has_a_closed_line_per_flow_with_the_capture_s_counts():
    records = connlog(short_flows()).result()
    assert len(records) == FLOWS
    assert len({r["uid"] for r in records}) == FLOWS
    assert len({r["community_id"] for r in records}) == FLOWS
    for r in records:
        assert (r["conn_state"], r["history"], r["end_reason"]) == ("SF", "ShADdFf", "fin"), r
        assert (r["orig_bytes"], r["resp_bytes"], r["missed_bytes"]) == (REQUEST, RESPONSE, 0), r
        # SYN, ACK, request, FIN, the last ACK; SYN-ACK, response, FIN: 40-byte headers
        assert (r["orig_pkts"], r["resp_pkts"]) == (5, 3), r
        assert (r["orig_ip_bytes"], r["resp_ip_bytes"]) == (5 * 40 + REQUEST, 3 * 40 + RESPONSE), r
        assert (r["client_state"], r["server_state"]) == ("TCP_TIME_WAIT", "TCP_CLOSED"), r


def test_connlog_counts_are_tshark_s_conversations():
    records = connlog(short_flows()).result()
    rows = tshark_conv(short_flows()).result()
    assert len(rows) == FLOWS
    theirs = {frozenset((row["a"], row["b"])): row["frames_to_a"] + row["frames_to_b"]
              for row in rows}
    ours = {frozenset(((r["id.orig_h"], r["id.orig_p"]), (r["id.resp_h"], r["id.resp_p"]))):
            r["orig_pkts"] + r["resp_pkts"] for r in records}
    assert ours == theirs


def test_connlog_lines_equal_those_of_full_inspection():
    assert connlog(short_flows()).result() == \
        connlog(short_flows(), ("--full-inspection",)).result()


def test_flowdump_files_equal_tcpflow_s():
    files = flowdump(short_flows()).result()
    assert len(files) == 2 * FLOWS
    assert files == tcpflow(short_flows()).result()
