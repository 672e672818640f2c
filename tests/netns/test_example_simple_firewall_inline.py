"""netns tier: examples/simple_firewall.py (the line-by-line port of mOS's simple_firewall)
inline, run as mOS runs its sample: `python simple_firewall.py` in a directory holding
config/mos.conf (examples/config/mos.conf with the testbed's interfaces: forward = 1, the
nic_forward_table pair) and config/simple_firewall.conf, one context per core::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: simple_firewall.py] B <== veth ==> srv0 :<p>-srv

Real curl against a real HTTP server: the DROP rule's port gets no connection (the SYNs are
dropped, the server never sees one), the ACCEPT rule's port and a port without a rule pass
byte-identical, the accepted flows bypass user space in the kernel (MOS_STOP_MON), IPv6
passes (the sample monitors AF_INET only), and the rule table counts what the C program
counts: each initial SYN, retransmissions included. Observed through the port's own output
(its rule tables and exit lines, and mosxdp's status lines: stat_print is on), curl, the
kernels' SNMP counters and the XDP program's counters. The set-up (Bed, Monitor) is livekit's.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import livekit
import pytest
from livekit import Bed, Monitor, sha256_file, wait_until

pytestmark = pytest.mark.netns

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLAIN, BLOCKED, WARM, OTHER = 8080, 8081, 8082, 8083
SIZES = {"f1k": 1024, "f20m": 20 * 1024 * 1024}
RULES = f"""# Simple firewall rules (the live test's)
#(act)  (src)        (dst)        (port)
ACCEPT  0.0.0.0      10.77.0.2    dport:{WARM}
DROP    10.77.0.0/24 10.77.0.2/32 dport:{BLOCKED}
ACCEPT  10.77.0.1    10.77.0.2    dport:{PLAIN}
"""


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    return livekit.www_dir(tmp_path_factory.mktemp("www"), SIZES)


@pytest.fixture(scope="module")
def bed(www, tmp_path_factory):
    livekit.require_live(("curl", "nstat", "ethtool"))
    with Bed.start(www, tmp_path_factory.mktemp("bed"), (PLAIN, BLOCKED, WARM, OTHER)) as bed:
        yield bed


def table_count(log: str, index: int) -> int:
    """Rule ``index``'s count in the last rule table of the port's output."""
    found = re.findall(rf"^{index}\s+(\d+)\s+(?:ACCEPT|DROP)\b", log, re.M)
    return int(found[-1]) if found else 0


def syns_sent(bed) -> int:
    """SYNs the client's kernel has sent: connections opened and SYNs retransmitted."""
    return bed.nstat("cli", "TcpActiveOpens") + bed.nstat("cli", "TcpExtTCPSynRetrans")


def test_port_inline_drop_rule_blocks_one_port_others_pass(bed, www, tmp_path):
    run_dir = tmp_path / "simple_firewall"
    (run_dir / "config").mkdir(parents=True)
    mos_conf = (EXAMPLES / "config" / "mos.conf").read_text()
    assert "\t# stat_print = eth1 eth2\n" in mos_conf
    mos_conf = mos_conf.replace("# stat_print", "stat_print")     # the status line, on stderr
    (run_dir / "config" / "mos.conf").write_text(
        mos_conf.replace("eth1", bed.tb.iface_a).replace("eth2", bed.tb.iface_b))
    (run_dir / "config" / "simple_firewall.conf").write_text(RULES)
    cores = os.sysconf("SC_NPROCESSORS_ONLN")
    mon = Monitor(bed, EXAMPLES / "simple_firewall.py", standalone=True, cwd=run_dir)
    try:
        def log():
            return mon.log_path.read_text(errors="replace")
        mon.warm_up(lambda: table_count(log(), 1) >= 1,
                    lambda: (bed.curl("--max-time", 2, "-o", "/dev/null", bed.url(4, "f1k", WARM),
                                      timeout=10), time.sleep(1.2)))

        # DROP: no connection; every SYN the client sent was dropped and counted.
        opens, syns = bed.nstat("srv", "TcpPassiveOpens"), syns_sent(bed)
        r, out = bed.download(4, "f1k", "--connect-timeout", 2.5, port=BLOCKED, max_time=10)
        assert r.returncode == 28, f"rc {r.returncode} {r.stderr!r} (expected a connect timeout)"
        blocked_syns = syns_sent(bed) - syns
        assert blocked_syns >= 2                      # the SYN and at least one retransmission
        assert bed.nstat("srv", "TcpPassiveOpens") == opens, "a connection reached the server"
        assert not (out.exists() and out.stat().st_size)

        # ACCEPT, and no rule (the default): byte-identical, bypassed in the kernel.
        bypassed = bed.xdp_counters()["verdict_bypass"]
        for port in (PLAIN, OTHER):
            r, out = bed.download(4, "f20m", port=port)
            assert r.returncode == 0, r.stderr
            assert sha256_file(out) == sha256_file(www / "f20m")
        assert bed.nstat("srv", "TcpPassiveOpens") == opens + 2
        bypassed = bed.xdp_counters()["verdict_bypass"] - bypassed
        assert bypassed > 2 * SIZES["f20m"] // 1448 // 2, bypassed    # most frames: acks too
        # IPv6 to the blocked port passes: the C sample's listener is AF_INET.
        r, out = bed.download(6, "f1k", port=BLOCKED)
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == sha256_file(www / "f1k")

        # The rule table, printed every second, counts SYNs as the C program does.
        wait_until("the rule table's counts", lambda: (table_count(log(), 2), table_count(log(), 3))
                   == (blocked_syns, 1), 5, mon.alive, detail=log)
        # SIGINT: exit 0, the program left as the kernel's forwarder, then detached
        mon.stop_clean()
        text = log()
        joined = re.findall(r"^\[\s*main:\s*\d+\] Message test thread (\d+) joined\.$", text, re.M)
        assert joined == [str(i) for i in range(cores)], text
        assert "Traceback" not in text, text
        # stat_print: mosxdp's status line every second, the contexts' counters summed
        status = re.findall(r"^mosxdp: in .* flows (\d+), verdict drops (\d+), lost \d+.*, callback errors (\d+)$",
                            text, re.M)
        assert len(status) >= 3, text
        assert (int(status[-1][1]), status[-1][2]) == (blocked_syns, "0"), status   # each SYN once
        last = text.split("Firewall rule table\n")[-1].splitlines()
        assert last[2].split() == ["2", str(blocked_syns), "DROP", "10.77.0.0/24", "10.77.0.2",
                                   f"dport:{BLOCKED}"], text
        assert last[3].split() == ["3", "1", "ACCEPT", "10.77.0.1", "10.77.0.2", f"dport:{PLAIN}"]
    finally:
        mon.close()
