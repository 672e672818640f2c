"""``mosxdp status``: the XDP programs attached to interfaces and, for mosxdp's, their
counters, verdict-map occupancy and interface configuration (read through the maps by
program id, so a program another or a dead process attached is seen too)."""
from __future__ import annotations

from ..bpfstructs import MX_IF_FAIL_CLOSED, MX_IF_FILTER_ALL_IP, MX_IF_INLINE, MX_VERDICT_ENTRIES
from ..errors import XdpError
from ..privileges import check_privileges
from .attach import PROG_NAME_PREFIX, ifindex_of, iproute, link_state
from .compile import MAIN_FUNC
from .maps import MosxdpMaps

__all__ = ["status"]


def status(ifnames: list[str] | None = None, *, netns: str | None = None) -> dict:
    """JSON-able state for ``mosxdp status``: per interface, the attached programs; per
    attached mosxdp_rx program, its counters (summed over CPUs), verdict-map occupancy
    and interface configuration. ``ifnames`` None: every interface."""
    check_privileges()
    out: dict = {"interfaces": {}, "programs": {}}
    with iproute(netns) as ipr:
        if ifnames is None:
            links = [(m.get_attr("IFLA_IFNAME"), m["index"]) for m in ipr.get_links()]
        else:
            links = [(n, ifindex_of(ipr, n, netns)) for n in ifnames]
        states = [link_state(ipr, n, i) for n, i in links]
    for st in states:
        out["interfaces"][st.ifname] = {
            "ifindex": st.ifindex,
            "programs": [{"mode": m, "id": i, "name": st.prog_names.get(m),
                          "ours": st.prog_names.get(m, "").startswith(PROG_NAME_PREFIX)}
                         for m, i in st.prog_ids.items()],
        }
        for m, pid in st.prog_ids.items():
            if st.prog_names.get(m) != MAIN_FUNC or str(pid) in out["programs"]:
                continue
            try:
                maps = MosxdpMaps.from_prog_id(pid)
            except (OSError, XdpError) as e:
                out["programs"][str(pid)] = {"error": str(e)}
                continue
            try:
                out["programs"][str(pid)] = {
                    "counters": maps.counters(),
                    "verdicts": maps.verdict_count(),
                    "verdicts_max": MX_VERDICT_ENTRIES,
                    "interfaces": {str(k): {"slot": c.slot, "egress_ifindex": c.egress_ifindex,
                                            "inline": bool(c.flags & MX_IF_INLINE),
                                            "fail_closed": bool(c.flags & MX_IF_FAIL_CLOSED),
                                            "filter_all_ip": bool(c.flags & MX_IF_FILTER_ALL_IP)}
                                   for k, c in maps.iface_configs().items()},
                }
            finally:
                maps.close()
    return out
