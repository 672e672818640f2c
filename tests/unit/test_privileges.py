"""The capability drop after the live set-up (mosxdp/io/privileges.py): the mask logic,
without root; and a real drop in a forked child (works as root or not: a drop only
ever lowers the sets)."""

import pytest
from forked import run_forked

from mosxdp.config import load_config
from mosxdp.io import privileges as P

ALL = (1 << 41) - 1                      # CAP_CHOWN .. CAP_CHECKPOINT_RESTORE
NET_ADMIN = 1 << 12
SETPCAP = 1 << 8
BPF = 1 << 39


def test_names_and_numbers():
    assert P.cap_number("CAP_NET_ADMIN") == 12
    assert P.cap_number("net_admin") == 12
    assert P.cap_number("39") == 39
    assert P.cap_names(NET_ADMIN | BPF) == ["CAP_NET_ADMIN", "CAP_BPF"]
    assert P.cap_names(1 << 45) == ["cap_45"]
    assert P.mask_of(["CAP_NET_ADMIN", "bpf", 8]) == NET_ADMIN | BPF | SETPCAP
    assert P.mask_of(P.RUNTIME_CAPS) == NET_ADMIN
    with pytest.raises(ValueError, match="unknown capability"):
        P.cap_number("CAP_FLY")


def test_plan_from_full_root():
    p = P.plan(NET_ADMIN, permitted=ALL, effective=ALL, bounding=ALL)
    assert p.kept == p.effective == NET_ADMIN
    assert p.missing == 0
    assert p.dropped == ALL & ~NET_ADMIN
    assert p.bounding_drop == [n for n in range(41) if n != 12]
    assert p.can_drop_bounding


def test_plan_keeps_nothing_it_does_not_have():
    # setpriv-style: only some capabilities, no CAP_SETPCAP -> the bounding set stays
    have = NET_ADMIN | BPF
    p = P.plan(NET_ADMIN, permitted=have, effective=have, bounding=ALL)
    assert p.kept == NET_ADMIN and p.missing == 0
    assert not p.can_drop_bounding
    assert BPF & p.dropped and not NET_ADMIN & p.dropped
    missing = P.plan(NET_ADMIN | BPF, permitted=BPF, effective=BPF, bounding=ALL)
    assert missing.missing == NET_ADMIN and missing.kept == BPF


def test_plan_drops_bounding_only_outside_keep():
    p = P.plan(0, permitted=0, effective=SETPCAP, bounding=NET_ADMIN | BPF)
    assert p.bounding_drop == [12, 39] and p.kept == 0
    assert p.dropped == NET_ADMIN | BPF


def test_result_line_and_dict():
    r = P.DropResult(kept=["CAP_NET_ADMIN"], dropped=["CAP_BPF", "CAP_SYS_ADMIN"],
                     bounding_kept=False)
    assert r.line() == ("privileges: kept CAP_NET_ADMIN, dropped 2 other(s); "
                        "no_new_privs set")
    assert r.as_dict()["bounding_set_reduced"] is True
    partial = P.DropResult(kept=[], dropped=["CAP_BPF"], bounding_kept=True)
    assert "kept no capability" in partial.line()
    assert "bounding set unchanged: no CAP_SETPCAP" in partial.line()


def test_config_key():
    assert load_config().keep_privileges is False
    assert load_config(keep_privileges=True).keep_privileges is True


def test_real_drop_in_a_child():
    before = P.read_status()

    def drop():
        result = P.drop_to(["CAP_NET_ADMIN"] if before["CapPrm"] & NET_ADMIN else [])
        return {"result": result.as_dict(), "status": P.read_status()}

    out = run_forked(drop)
    assert "error" not in out, out
    status = out["value"]["status"]
    keep = before["CapPrm"] & NET_ADMIN
    assert status["CapEff"] == status["CapPrm"] == keep
    assert status["CapInh"] == 0 and status["CapAmb"] == 0
    assert status["NoNewPrivs"] == 1
    if before["CapEff"] & SETPCAP:
        assert status["CapBnd"] == keep
        assert out["value"]["result"]["bounding_set_reduced"]
    else:
        assert status["CapBnd"] == before["CapBnd"]


def test_drop_refuses_what_is_not_permitted_or_with_threads():
    def drop_twice():
        P.drop_to([])                    # as root too: afterwards nothing is permitted
        return P.drop_to(["CAP_PERFMON"]).as_dict()

    out = run_forked(drop_twice)
    assert "cannot keep CAP_PERFMON: not in the permitted set" in out["error"]

    def with_a_thread():
        import threading
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            return P.drop_to([]).as_dict()
        finally:
            stop.set()
    out = run_forked(with_a_thread)
    assert "capabilities are per thread" in out["error"]


@pytest.mark.parametrize("release, sysctl, kept", [
    ("6.18.0-1-amd64", "2", ("CAP_NET_ADMIN",)),        # map commands on an open fd: no cap
    ("6.5.0", "1", ("CAP_NET_ADMIN",)),
    ("6.1.0-56-amd64", "2", ("CAP_NET_ADMIN", "CAP_BPF")),   # Debian 12's kernel
    ("5.15.0-91-generic", "1", ("CAP_NET_ADMIN", "CAP_BPF")),
    ("6.1.0-56-amd64", "0", ("CAP_NET_ADMIN",)),
    ("6.1.0-56-amd64", "", ("CAP_NET_ADMIN",)),
])
def test_runtime_caps_keep_cap_bpf_only_where_the_kernel_needs_it(release, sysctl, kept):
    assert P.runtime_caps(release, sysctl) == kept
