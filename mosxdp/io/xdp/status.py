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
from .owner import holder_of

__all__ = ["status", "inline_peer"]


def status(ifnames: list[str] | None = None, *, netns: str | None = None) -> dict:
    """JSON-able state for ``mosxdp status``: per interface, the attached programs; per
    attached mosxdp_rx program, its counters (summed over CPUs), verdict-map occupancy
    and interface configuration; per interface with a program, its owner as its lock file
    says (``pid``, ``state`` "running" or "fail-open", ``held``: that monitor is alive).
    ``ifnames`` None: every interface."""
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
        holder = holder_of(st.ifindex, netns=netns) if st.attached else None
        if holder is not None:
            out["interfaces"][st.ifname]["owner"] = {"pid": holder.pid, "state": holder.state,
                                                     "held": holder.held}
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


def inline_peer(ifname: str, *, netns: str | None = None) -> str | None:
    """The interface a mosxdp program attached to ``ifname`` forwards to (inline), by its
    per-interface configuration; None when it is passive, or not mosxdp_rx."""
    with iproute(netns) as ipr:
        st = link_state(ipr, ifname, ifindex_of(ipr, ifname, netns))
        for m, pid in st.prog_ids.items():
            if st.prog_names.get(m) != MAIN_FUNC:
                continue
            try:
                maps = MosxdpMaps.from_prog_id(pid)
            except (OSError, XdpError):
                continue
            try:
                cfg = maps.iface_configs().get(st.ifindex)
            finally:
                maps.close()
            if cfg is not None and cfg.flags & MX_IF_INLINE:
                from pyroute2.netlink.exceptions import NetlinkError
                try:
                    return ipr.link("get", index=cfg.egress_ifindex)[0].get_attr("IFLA_IFNAME")
                except (NetlinkError, IndexError):
                    return "ifindex %d" % cfg.egress_ifindex
    return None
