"""XdpProgram and the attach/detach helpers on real (veth, ifb) devices: what gets
attached, refused, replaced and detached, including on errors, with keep_attached and
after kill -9 (fail-open in the kernel); and the start-up error messages."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from mosxdp.demo.passprog import attach_pass_program, load_pass_program
from mosxdp.io import privileges, xdp
from mosxdp.io.bpfstructs import MX_MAX_QUEUES
from mosxdp.io.uapi import XDP_FLAGS_DRV_MODE
from mosxdp.io.xdp.attach import ifindex_of, iproute, set_xdp

pytestmark = pytest.mark.bpf

ETH_P_ALL = 0x0003


def load_foreign_program() -> int:
    """An XDP_PASS program whose name is not mosxdp's."""
    return load_pass_program("foreign_xdp")


def attach_fd(ifname: str, fd: int, mode_flag: int = XDP_FLAGS_DRV_MODE) -> None:
    with iproute() as ipr:
        set_xdp(ipr, ifindex_of(ipr, ifname), fd, mode_flag)


@pytest.fixture
def devs(netdevs):
    yield netdevs
    for n in (netdevs.a, netdevs.b, netdevs.pa, netdevs.pb, netdevs.d):
        st = xdp.xdp_state(n)
        if st.attached:
            xdp.detach(n, force=True)


def attached(ifname: str) -> xdp.XdpState:
    return xdp.xdp_state(ifname)


# ---------------------------------------------------------------------------------------
# attach / detach
# ---------------------------------------------------------------------------------------

def test_inline_pair_attached_and_detached(devs):
    with xdp.XdpProgram([devs.a], peers={devs.a: devs.b}, mode="native") as p:
        assert p.ifaces == [devs.a, devs.b] and p.modes == {devs.a: "native", devs.b: "native"}
        for n in (devs.a, devs.b):
            st = attached(n)
            assert st.ours and st.prog_ids == {"native": p.prog_id}
            assert st.prog_names["native"].startswith(xdp.PROG_NAME_PREFIX)
        assert p.xsk_index(devs.a, 0) == 0 and p.xsk_index(devs.b, 1) == MX_MAX_QUEUES + 1
        with pytest.raises(xdp.XdpError):
            p.xsk_index(devs.a, MX_MAX_QUEUES)
        with pytest.raises(xdp.XdpError, match="not managed"):
            p.xsk_index("nope0", 0)
        cfg = p.maps.iface_configs()
        assert cfg[devs.ifindex(devs.a)].egress_ifindex == devs.ifindex(devs.b)
        assert cfg[devs.ifindex(devs.b)].egress_slot == p.slot(devs.a)
        assert p.xsks_map_fd > 0 and set(p.counters()) >= {"rx_total", "to_xsk"}
        assert p.num_rx_queues(devs.a) == 2
    for n in (devs.a, devs.b):
        assert not attached(n).attached


def test_unknown_interface_is_named(devs):
    with pytest.raises(xdp.XdpError, match="unknown interface 'mxnosuch0'"):
        with xdp.XdpProgram([devs.a, "mxnosuch0"]):
            pass
    assert not attached(devs.a).attached


def test_exception_in_body_detaches(devs):
    with pytest.raises(KeyError):
        with xdp.XdpProgram([devs.a], mode="generic") as p:
            assert attached(devs.a).prog_ids == {"generic": p.prog_id}
            raise KeyError("app failed")
    assert not attached(devs.a).attached


def test_failure_mid_setup_detaches_what_was_attached(devs):
    # the veth takes native XDP, the ifb does not: a is attached first, then d fails
    with pytest.raises(xdp.XdpError, match=r"does not support native XDP.*generic or auto"):
        with xdp.XdpProgram([devs.a, devs.d], mode="native"):
            pass
    assert not attached(devs.a).attached and not attached(devs.d).attached


def test_auto_mode_falls_back_to_generic_with_a_note(devs):
    with xdp.XdpProgram([devs.d, devs.a], mode="auto") as p:
        assert p.modes == {devs.d: "generic", devs.a: "native"}
        assert any(devs.d in n and "generic" in n for n in p.notes)
        assert attached(devs.d).prog_ids == {"generic": p.prog_id}
    assert not attached(devs.d).attached and not attached(devs.a).attached


def test_foreign_program_is_refused_then_replaced_with_force(devs):
    fd = load_foreign_program()
    try:
        attach_fd(devs.a, fd)
        with pytest.raises(xdp.XdpError) as ei:
            with xdp.XdpProgram([devs.a]):
                pass
        msg = str(ei.value)
        assert "foreign_xdp" in msg and "--force" in msg and "mosxdp detach --iface %s" % devs.a in msg
        assert attached(devs.a).prog_names == {"native": "foreign_xdp"}
        with pytest.raises(xdp.XdpError, match="not a mosxdp program"):
            xdp.detach(devs.a)
        with xdp.XdpProgram([devs.a], force=True, mode="generic") as p:
            assert attached(devs.a).prog_ids == {"generic": p.prog_id}
            assert any("foreign" in n for n in p.notes)
        assert not attached(devs.a).attached
    finally:
        os.close(fd)


def test_stale_mosxdp_program_is_replaced_without_force(devs):
    stale = attach_pass_program(devs.a)
    assert attached(devs.a).prog_names == {"native": "mosxdp_pass"}
    with xdp.XdpProgram([devs.a]) as p:
        assert attached(devs.a).prog_ids == {"native": p.prog_id}
        assert any("stale mosxdp" in n for n in p.notes)
    assert not attached(devs.a).attached
    stale.detach()  # its program is gone already: a no-op that closes the fd


def test_exit_leaves_a_program_that_is_no_longer_ours(devs):
    fd = load_foreign_program()
    try:
        with xdp.XdpProgram([devs.a], mode="native") as p:
            with iproute() as ipr:  # someone else replaces our program meanwhile
                set_xdp(ipr, p.ifindex(devs.a), fd, XDP_FLAGS_DRV_MODE)
        assert attached(devs.a).prog_names == {"native": "foreign_xdp"}
        assert any("no longer ours" in n for n in p.notes)
    finally:
        os.close(fd)


def test_keep_attached_then_detach_standalone(devs):
    with xdp.XdpProgram([devs.a], keep_attached=True) as p:
        pid = p.prog_id
    st = attached(devs.a)
    assert st.ours and st.prog_ids == {"native": pid}
    maps = xdp.MosxdpMaps.from_prog_id(pid)
    try:
        assert set(maps.counters()) >= {"rx_total"} and maps.iface_configs()
    finally:
        maps.close()
    import json
    st = json.loads(json.dumps(xdp.status([devs.a, devs.b])))
    assert st["interfaces"][devs.a]["programs"] == [{"mode": "native", "id": pid, "name": "mosxdp_rx", "ours": True}]
    assert st["interfaces"][devs.b]["programs"] == []
    prog = st["programs"][str(pid)]
    assert prog["verdicts"] == 0 and "rx_total" in prog["counters"]
    assert prog["interfaces"][str(devs.ifindex(devs.a))]["inline"] is False
    removed = xdp.detach(devs.a)
    assert removed == "native program id %d 'mosxdp_rx'" % pid and not attached(devs.a).attached
    assert xdp.detach(devs.a) is None  # nothing left: a no-op


# ---------------------------------------------------------------------------------------
# ownership: a live owner is never replaced nor detached; a dead one's program is stale
# ---------------------------------------------------------------------------------------

def test_second_program_on_held_interfaces_is_refused_and_touches_nothing(devs):
    with xdp.XdpProgram([devs.a], peers={devs.a: devs.b}) as first:
        before = {n: attached(n).prog_ids for n in (devs.a, devs.b)}
        for ifaces in ([devs.b], [devs.d, devs.a]):
            with pytest.raises(xdp.InUse) as ei:
                with xdp.XdpProgram(ifaces, force=True):
                    pass
            assert str(ei.value) == "%s in use by mosxdp PID %d" % (ifaces[-1], os.getpid())
        assert not attached(devs.d).attached  # the free interface listed first: untouched
        assert {n: attached(n).prog_ids for n in (devs.a, devs.b)} == before
        with pytest.raises(xdp.XdpError, match=r"in use by mosxdp PID %d; not detaching" % os.getpid()):
            xdp.detach(devs.a)
        assert attached(devs.a).prog_ids == {"native": first.prog_id}
        owner = xdp.status([devs.a])["interfaces"][devs.a]["owner"]
        assert owner == {"pid": os.getpid(), "state": "running", "held": True}
    assert not attached(devs.a).attached and not attached(devs.b).attached
    assert xdp.status([devs.a])["interfaces"][devs.a].get("owner") is None


def test_left_fail_open_program_is_taken_over_quietly(devs):
    with xdp.XdpProgram([devs.a], peers={devs.a: devs.b}, keep_attached=True) as p:
        left = p.prog_id
    assert p.left_attached == [devs.a, devs.b] and p.detached == []
    assert xdp.status([devs.a])["interfaces"][devs.a]["owner"] == \
        {"pid": os.getpid(), "state": "fail-open", "held": False}
    assert xdp.inline_peer(devs.a) == devs.b and xdp.inline_peer(devs.b) == devs.a
    with xdp.XdpProgram([devs.a], peers={devs.a: devs.b}) as p:
        assert p.replaced == {devs.a: "fail-open", devs.b: "fail-open"}
        assert not any("stale" in n for n in p.notes), p.notes
        assert any("fail-open program id %d left by mosxdp PID %d" % (left, os.getpid()) in n
                   for n in p.notes), p.notes
    assert p.detached == [devs.b, devs.a] and not attached(devs.a).attached


def test_forced_detach_under_a_live_owner_is_not_reported_as_left(devs):
    with xdp.XdpProgram([devs.a], peers={devs.a: devs.b}, keep_attached=True) as p:
        pid = p.prog_id
        assert xdp.detach(devs.a, force=True) == "native program id %d 'mosxdp_rx'" % pid
    assert p.left_attached == [devs.b], p.notes
    assert any("%s: our program is no longer attached" % devs.a in n for n in p.notes), p.notes
    assert not attached(devs.a).attached and attached(devs.b).prog_ids == {"native": pid}
    assert xdp.status([devs.b])["interfaces"][devs.b]["owner"]["state"] == "fail-open"
    assert xdp.owner.holder_of(devs.ifindex(devs.a)) is None  # its lock file went


def test_program_of_a_killed_owner_is_stale_and_named(devs):
    code = ("import sys, time\n"
            "from mosxdp.io.xdp import XdpProgram\n"
            "with XdpProgram([sys.argv[1]]) as p:\n"
            "    print(p.prog_id, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, devs.a], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read() if proc.poll() is not None else line
        with pytest.raises(xdp.InUse, match="%s in use by mosxdp PID %d" % (devs.a, proc.pid)):
            with xdp.XdpProgram([devs.a]):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert xdp.status([devs.a])["interfaces"][devs.a]["owner"] == \
        {"pid": proc.pid, "state": "running", "held": False}
    with xdp.XdpProgram([devs.a]) as p:
        assert p.replaced == {devs.a: "stale"}
        assert any("stale mosxdp program(s) (its monitor, PID %d, is gone)" % proc.pid in n
                   for n in p.notes), p.notes
    assert not attached(devs.a).attached


def test_pass_program_and_detach_in_other_netns(bpf_env):
    from pyroute2 import netns, IPRoute
    ns = "mxtest%d" % os.getpid()
    netns.create(ns)
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("add", ifname="v0", kind="veth", peer={"ifname": "v1"})
        with attach_pass_program("v0", netns=ns) as pp:
            st = xdp.xdp_state("v0", netns=ns)
            assert st.prog_names == {"native": "mosxdp_pass"} and pp.mode == "native"
        assert not xdp.xdp_state("v0", netns=ns).attached
        attach_pass_program("v1", netns=ns, mode="generic")
        removed = xdp.detach("v1", netns=ns)
        assert "generic program id" in removed and "'mosxdp_pass'" in removed
        with pytest.raises(xdp.XdpError, match="unknown interface 'v9' in network namespace"):
            xdp.xdp_state("v9", netns=ns)
    finally:
        netns.remove(ns)


def test_constructor_validation():
    with pytest.raises(xdp.XdpError, match="mode"):
        xdp.XdpProgram(["x"], mode="fast")
    with pytest.raises(xdp.XdpError, match="own peer"):
        xdp.XdpProgram(["x"], peers={"x": "x"})
    with pytest.raises(xdp.XdpError, match="paired with both"):
        xdp.XdpProgram(["x"], peers={"x": "y", "z": "x"})
    with pytest.raises(xdp.XdpError, match="no interface"):
        xdp.XdpProgram([])


# ---------------------------------------------------------------------------------------
# live frames through veths: kernel path, fail-open after kill -9, fail-closed
# ---------------------------------------------------------------------------------------

def frame(marker: bytes) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.9.0.1", dst="10.9.0.2")
                 / TCP(sport=40000, dport=80, flags="A") / marker)


def send_and_capture(devs, marker: bytes, tx: str, rx: str, timeout: float = 1.0) -> bool:
    """Send one frame into `tx` (a veth end); True when it shows up on `rx`."""
    r = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        r.bind((rx, 0))
        r.settimeout(0.1)
        s.bind((tx, 0))
        s.send(frame(marker))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if marker in r.recv(65535):
                    return True
            except socket.timeout:
                pass
        return False
    finally:
        r.close()
        s.close()


@pytest.fixture
def live(devs):
    devs.up(devs.a, devs.pa, devs.b, devs.pb)
    with attach_pass_program(devs.pb):  # pb receives what a redirects out of b
        yield devs


def test_inline_kernel_path_forwards_live_frames(live):
    with xdp.XdpProgram([live.a], peers={live.a: live.b}) as p:
        assert send_and_capture(live, b"MARK-inline", live.pa, live.pb)
        c = p.counters()
        assert c["kernel_forward"] >= 1 and c["no_xsk_fallback"] >= 1 and c["drop"] == 0


def test_passive_passes_live_frames(live):
    with xdp.XdpProgram([live.a]) as p:
        assert send_and_capture(live, b"MARK-passive", live.pa, live.a)
        assert p.counters()["pass"] >= 1


def test_fail_closed_drops_live_frames_with_no_socket(live):
    with xdp.XdpProgram([live.a], peers={live.a: live.b}, fail_closed=True) as p:
        assert not send_and_capture(live, b"MARK-closed", live.pa, live.pb, timeout=0.5)
        assert p.counters()["fail_closed_drop"] >= 1


def test_program_stays_attached_and_forwards_after_kill_9(live):
    code = ("import sys, time\n"
            "from mosxdp.io.xdp import XdpProgram\n"
            "with XdpProgram([sys.argv[1]], peers={sys.argv[1]: sys.argv[2]}) as p:\n"
            "    print(p.prog_id, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, live.a, live.b], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read() if proc.poll() is not None else line
        prog_id = int(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for n in (live.a, live.b):
            st = attached(n)
            assert st.ours and st.prog_ids == {"native": prog_id}
        assert send_and_capture(live, b"MARK-failopen", live.pa, live.pb)
        maps = xdp.MosxdpMaps.from_prog_id(prog_id)
        try:
            assert maps.counters()["kernel_forward"] >= 1
        finally:
            maps.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    xdp.detach(live.a)
    xdp.detach(live.b)
    assert not attached(live.a).attached


# ---------------------------------------------------------------------------------------
# start-up errors say the fix (no privileges needed)
# ---------------------------------------------------------------------------------------

def test_privilege_error_says_the_fix(monkeypatch):
    monkeypatch.setattr(privileges, "effective_caps", lambda: 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(xdp.XdpError) as ei:
        xdp.check_privileges()
    msg = str(ei.value)
    assert "root" in msg and "CAP_BPF" in msg and "CAP_NET_ADMIN" in msg


def test_root_without_caps_is_told_which(monkeypatch):
    monkeypatch.setattr(privileges, "effective_caps", lambda: 1 << 12)  # CAP_NET_ADMIN only
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(xdp.XdpError, match="without CAP_BPF"):
        xdp.check_privileges()


def test_missing_kernel_headers_point_to_setup(monkeypatch, tmp_path):
    pytest.importorskip("bcc")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "none"))
    with pytest.raises(xdp.XdpError, match="scripts/setup.sh"):
        xdp.check_environment()


def test_bcc_not_importable_says_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)
    with pytest.raises(xdp.XdpError, match="python3-bpfcc.*system-site-packages"):
        xdp.check_environment()
