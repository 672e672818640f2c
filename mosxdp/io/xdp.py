"""Build, load, attach and detach mosxdp's XDP program; typed access to its maps.

The program (bpf/mosxdp.c) is compiled at run time by bcc from the files in bpf/, with
the monitor filter in a generated header (mx_filter.h) in a private temporary build
directory: the C source is never edited.

Layers, each usable alone:

- ``compile_program(filter_c_expr)`` -> ``LoadedProgram``: compiled and loaded, maps
  created, nothing attached (what the BPF_PROG_TEST_RUN tests use).
- ``MosxdpMaps``: the maps by fd (counters, verdicts, per-interface config, XSKMAP,
  devmap), independent of bcc, so ``mosxdp status`` can open the maps of a program that
  another (or a dead) process attached: ``MosxdpMaps.from_prog_id(...)``.
- ``XdpProgram``: the context manager the live engine uses: checks, compiles, fills
  config, attaches to every interface, and on a clean exit detaches what it attached.

Fail-open after ``kill -9``: programs are attached over netlink (not bpf_link), so they
stay attached when the process dies, with their maps; the dead process's AF_XDP sockets
leave the XSKMAP and frames take the kernel path (or are dropped with fail_closed).
Nothing here detaches from ``__del__`` or ``atexit``: only ``__exit__`` does (callers turn
SIGTERM into an exception so that ``__exit__`` runs).
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import fcntl
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import bpfstructs as bs
from .bpfstructs import (COUNTER_NAMES, FlowVerdict, MxFlowKey, MxIfConfig, MxVerdict,
                         MX_ACTION_BYPASS, MX_ACTION_DROP, MX_MAX_QUEUES, MX_MAX_SLOTS,
                         MX_IF_BYPASS_CONSUME, MX_IF_FAIL_CLOSED, MX_IF_FILTER_ALL_IP, MX_IF_INLINE,
                         make_flow_key)

__all__ = [
    "XdpError", "XdpProgram", "LoadedProgram", "MosxdpMaps", "XdpState",
    "compile_program", "filter_header_text", "check_privileges", "check_environment",
    "detach", "attach_pass_program", "PassProgram", "xdp_state", "num_rx_queues", "status",
    "prog_test_run", "make_flow_key", "BPF_DIR", "PROG_NAME_PREFIX",
    "XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT",
]

log = logging.getLogger("mosxdp.xdp")

#: bpf/ holding mosxdp.c and its headers (override with MOSXDP_BPF_DIR).
BPF_DIR = Path(os.environ.get("MOSXDP_BPF_DIR") or Path(__file__).resolve().parents[2] / "bpf")
#: Every program mosxdp attaches has a name starting with this: how "ours" is recognised.
PROG_NAME_PREFIX = "mosxdp"
MAIN_FUNC = "mosxdp_rx"
PASS_PROG_NAME = "mosxdp_pass"

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED values
_ATTACHED_MODES = {0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi"}
_PYROUTE2_MODES = {None: None, "xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
                   "xdpmulti": "multi"}

BPF_PROG_TYPE_XDP = 6
_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_BPF = 12, 21, 39


class XdpError(RuntimeError):
    """A datapath set-up problem, with a message that says the fix."""


# ---------------------------------------------------------------------------------------
# libbpf (ctypes): map and program syscalls, independent of bcc
# ---------------------------------------------------------------------------------------

class _BpfTestRunOpts(ct.Structure):
    """libbpf's struct bpf_test_run_opts (libbpf >= 0.7)."""
    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p), ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32),
        ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
    ]


class _XdpMd(ct.Structure):
    """UAPI struct xdp_md, the ctx_in of an XDP test run."""
    _fields_ = [(n, ct.c_uint32) for n in ("data", "data_end", "data_meta", "ingress_ifindex",
                                           "rx_queue_index", "egress_ifindex")]


class _ProgInfo(ct.Structure):
    """Head of UAPI struct bpf_prog_info (the kernel copies only what we ask for)."""
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32), ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64), ("name", ct.c_char * 16),
    ]


class _MapInfo(ct.Structure):
    """Head of UAPI struct bpf_map_info."""
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class _Insn(ct.Structure):
    _fields_ = [("code", ct.c_uint8), ("regs", ct.c_uint8), ("off", ct.c_int16), ("imm", ct.c_int32)]


_libbpf_handle = None


def _libbpf():
    global _libbpf_handle
    if _libbpf_handle is None:
        try:
            lib = ct.CDLL("libbpf.so.1", use_errno=True)
        except OSError as e:
            raise XdpError("libbpf.so.1 not found (%s): install libbpf1 (scripts/setup.sh)" % e) from e
        vp, u32p = ct.c_void_p, ct.POINTER(ct.c_uint32)
        sigs = {
            "bpf_map_update_elem": ([ct.c_int, vp, vp, ct.c_uint64], ct.c_int),
            "bpf_map_lookup_elem": ([ct.c_int, vp, vp], ct.c_int),
            "bpf_map_delete_elem": ([ct.c_int, vp], ct.c_int),
            "bpf_map_get_next_key": ([ct.c_int, vp, vp], ct.c_int),
            "bpf_map_lookup_and_delete_elem": ([ct.c_int, vp, vp], ct.c_int),
            "bpf_prog_get_fd_by_id": ([ct.c_uint32], ct.c_int),
            "bpf_map_get_fd_by_id": ([ct.c_uint32], ct.c_int),
            "bpf_obj_get_info_by_fd": ([ct.c_int, vp, u32p], ct.c_int),
            "bpf_prog_test_run_opts": ([ct.c_int, ct.POINTER(_BpfTestRunOpts)], ct.c_int),
            "bpf_prog_load": ([ct.c_int, ct.c_char_p, ct.c_char_p, vp, ct.c_size_t, vp], ct.c_int),
            "libbpf_num_possible_cpus": ([], ct.c_int),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        _libbpf_handle = lib
    return _libbpf_handle


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ct.get_errno() or -ret
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))
    return ret


def _prog_info(fd: int) -> _ProgInfo:
    info = _ProgInfo()
    n = ct.c_uint32(ct.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)), "BPF_OBJ_GET_INFO_BY_FD")
    return info


def _prog_name_by_id(prog_id: int) -> str | None:
    fd = _libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        return _prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def prog_test_run(prog_fd: int, frame: bytes, *, ifindex: int = 0, rx_queue: int = 0,
                  repeat: int = 1) -> tuple[int, bytes]:
    """Run an XDP program once on ``frame`` with BPF_PROG_TEST_RUN.

    ``ifindex``/``rx_queue`` fill ctx->ingress_ifindex/rx_queue_index (the device must
    exist in the caller's network namespace and have that RX queue; 0 = loopback).
    Returns ``(action, frame_after)``. A redirect (XSKMAP or DEVMAP) reports XDP_REDIRECT
    and goes nowhere; a failed redirect reports the fallback action the program chose.
    """
    data = ct.create_string_buffer(bytes(frame), len(frame))
    out = ct.create_string_buffer(len(frame) + 512)
    opts = _BpfTestRunOpts(sz=ct.sizeof(_BpfTestRunOpts), repeat=repeat)
    opts.data_in = ct.cast(data, ct.c_void_p)
    opts.data_size_in = len(frame)
    opts.data_out = ct.cast(out, ct.c_void_p)
    opts.data_size_out = len(out)
    md = _XdpMd(0, len(frame), 0, ifindex, rx_queue, 0)
    if ifindex:
        opts.ctx_in = ct.addressof(md)
        opts.ctx_size_in = ct.sizeof(md)
    _check(_libbpf().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, out.raw[:opts.data_size_out]


# ---------------------------------------------------------------------------------------
# start-up checks
# ---------------------------------------------------------------------------------------

def _cap_eff() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return (1 << 64) - 1 if os.geteuid() == 0 else 0


def check_privileges() -> None:
    """Raise XdpError unless this process may load and attach XDP programs."""
    caps = _cap_eff()
    have = lambda c: bool(caps & (1 << c))  # noqa: E731
    missing = []
    if not have(_CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    if not (have(_CAP_BPF) or have(_CAP_SYS_ADMIN)):
        missing.append("CAP_BPF")
    if missing:
        if os.geteuid() != 0:
            what = "not running as root (missing %s)" % " and ".join(missing)
        else:
            what = "running as root but without %s (a restricted container?)" % " and ".join(missing)
        raise XdpError(
            "%s: loading and attaching XDP programs needs CAP_BPF and CAP_NET_ADMIN (bcc also "
            "uses CAP_PERFMON and CAP_SYS_ADMIN). Run as root (sudo), or grant the capabilities, "
            "e.g. `sudo setpriv --inh-caps +bpf,+net_admin,+perfmon,+sys_admin --ambient-caps "
            "+bpf,+net_admin,+perfmon,+sys_admin -- mosxdp ...`" % what)


def _import_bcc():
    try:
        import bcc  # noqa: F401
        from bcc import BPF
    except Exception as e:  # ImportError, or libbcc failing to load
        raise XdpError(
            "bcc is not importable from %s (%s): install Debian's python3-bpfcc and run "
            "mosxdp from a venv created with --system-site-packages (scripts/setup.sh does both)"
            % (sys.executable, e)) from e
    return BPF


def _kernel_headers_dir() -> str:
    return os.environ.get("BCC_KERNEL_SOURCE") or "/lib/modules/%s/build" % os.uname().release


def check_environment() -> None:
    """Raise XdpError naming the fix when bcc, kernel headers or bpf/ are missing."""
    _import_bcc()
    kdir = _kernel_headers_dir()
    if not os.path.isdir(os.path.join(kdir, "include")):
        raise XdpError(
            "no kernel headers for bcc at %s (kernel %s): run scripts/setup.sh as root; it "
            "installs linux-headers-amd64 and links them there (only stable UAPI is used)"
            % (kdir, os.uname().release))
    if not (BPF_DIR / "mosxdp.c").is_file():
        raise XdpError("XDP program source not found at %s (set MOSXDP_BPF_DIR)" % (BPF_DIR / "mosxdp.c"))


# ---------------------------------------------------------------------------------------
# compile + load
# ---------------------------------------------------------------------------------------

def filter_header_text(filter_c_expr: str | None) -> str:
    """The generated mx_filter.h for a monitor-filter C expression over
    ``struct mx_flow_view *v`` (None: every TCP frame matches)."""
    if filter_c_expr is None or not filter_c_expr.strip():
        body = "\treturn 1;"
    else:
        if "*/" in filter_c_expr:
            raise XdpError("filter expression must not contain '*/'")
        body = "\treturn (%s) ? 1 : 0;" % filter_c_expr.strip()
    return (
        "/* Generated by mosxdp/io/xdp.py: the monitor filter. Do not edit. */\n"
        "#ifndef MX_FILTER_H\n#define MX_FILTER_H\n"
        "static __always_inline int mx_filter_match(struct mx_flow_view *v)\n{\n"
        "%s\n}\n#endif\n" % body)


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """Collect what C code (clang, the verifier log) writes to fd 2, and replay it."""
    out: list[str] = []
    try:
        sys.stderr.flush()
    except Exception:
        pass
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            out.append(text)


def _replay(text: str) -> None:
    """Give back what was captured from fd 2 on success (warnings, other threads)."""
    if text:
        with contextlib.suppress(Exception):
            sys.stderr.write(text)


class MosxdpMaps:
    """The program's maps by fd, with typed access (no bcc needed).

    ``fds``: map name -> fd for "counters", "verdicts", "if_config", "xsks_map",
    "tx_ports". Owned fds are closed by ``close()``.
    """
    NAMES = ("counters", "verdicts", "if_config", "xsks_map", "tx_ports")

    def __init__(self, fds: dict[str, int], *, owned: bool = False):
        missing = [n for n in self.NAMES if n not in fds]
        if missing:
            raise XdpError("program has no map(s) %s: not a mosxdp program?" % ", ".join(missing))
        self.fds = dict(fds)
        self._owned = owned
        self._ncpus = _check(_libbpf().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")

    @classmethod
    def from_prog_id(cls, prog_id: int) -> "MosxdpMaps":
        """Open the maps of an attached mosxdp program (e.g. one left behind)."""
        lib = _libbpf()
        pfd = _check(lib.bpf_prog_get_fd_by_id(prog_id), "BPF_PROG_GET_FD_BY_ID %d" % prog_id)
        try:
            info = _prog_info(pfd)
            ids = (ct.c_uint32 * max(info.nr_map_ids, 1))()
            info2 = _ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ct.addressof(ids))
            n = ct.c_uint32(ct.sizeof(info2))
            _check(lib.bpf_obj_get_info_by_fd(pfd, ct.byref(info2), ct.byref(n)), "prog info")
        finally:
            os.close(pfd)
        fds: dict[str, int] = {}
        for mid in ids[:info.nr_map_ids]:
            mfd = lib.bpf_map_get_fd_by_id(mid)
            if mfd < 0:
                continue
            minfo = _MapInfo()
            n = ct.c_uint32(ct.sizeof(minfo))
            if lib.bpf_obj_get_info_by_fd(mfd, ct.byref(minfo), ct.byref(n)) == 0:
                name = minfo.name.decode(errors="replace")
                if name in cls.NAMES and name not in fds:
                    fds[name] = mfd
                    continue
            os.close(mfd)
        return cls(fds, owned=True)

    def close(self) -> None:
        if self._owned:
            for fd in self.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fds = {}

    # -- counters ------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed over the CPUs, by name (bpfstructs.COUNTER_NAMES)."""
        lib, fd = _libbpf(), self.fds["counters"]
        vals = (ct.c_uint64 * self._ncpus)()
        res = {}
        for i, name in enumerate(COUNTER_NAMES):
            k = ct.c_uint32(i)
            _check(lib.bpf_map_lookup_elem(fd, ct.byref(k), vals), "counters lookup")
            res[name] = sum(vals)
        return res

    def reset_counters(self) -> None:
        lib, fd = _libbpf(), self.fds["counters"]
        zero = (ct.c_uint64 * self._ncpus)()
        for i in range(len(COUNTER_NAMES)):
            k = ct.c_uint32(i)
            _check(lib.bpf_map_update_elem(fd, ct.byref(k), zero, 0), "counters reset")

    # -- interface config, devmap, XSKMAP ------------------------------------------------
    def set_iface_config(self, ifindex: int, cfg: MxIfConfig) -> None:
        k = ct.c_uint32(ifindex)
        _check(_libbpf().bpf_map_update_elem(self.fds["if_config"], ct.byref(k), ct.byref(cfg), 0),
               "if_config update")

    def iface_configs(self) -> dict[int, MxIfConfig]:
        return {k.value: v for k, v in self._items("if_config", ct.c_uint32, MxIfConfig)}

    def set_tx_port(self, slot: int, ifindex: int) -> None:
        k, v = ct.c_uint32(slot), ct.c_uint32(ifindex)
        _check(_libbpf().bpf_map_update_elem(self.fds["tx_ports"], ct.byref(k), ct.byref(v), 0),
               "tx_ports update (ifindex %d)" % ifindex)

    def set_xsk(self, index: int, sock_fd: int) -> None:
        """Put an AF_XDP socket at an XSKMAP index (see XdpProgram.xsk_index)."""
        k, v = ct.c_uint32(index), ct.c_int32(sock_fd)
        _check(_libbpf().bpf_map_update_elem(self.fds["xsks_map"], ct.byref(k), ct.byref(v), 0),
               "xsks_map update at %d" % index)

    def clear_xsk(self, index: int) -> None:
        k = ct.c_uint32(index)
        if _libbpf().bpf_map_delete_elem(self.fds["xsks_map"], ct.byref(k)) < 0:
            err = ct.get_errno()
            if err != errno.ENOENT:
                raise OSError(err, "xsks_map delete at %d: %s" % (index, os.strerror(err)))

    # -- verdicts ------------------------------------------------------------------------
    def set_verdict(self, key: MxFlowKey, action: int | str) -> None:
        """Create or change a flow's verdict; an existing entry keeps its counters."""
        action = _action(action)
        lib, fd = _libbpf(), self.fds["verdicts"]
        v = MxVerdict()
        if lib.bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(v)) < 0:
            v = MxVerdict()
            v.last_seen_ns = 0
        v.action = action
        _check(lib.bpf_map_update_elem(fd, ct.byref(key), ct.byref(v), 0), "verdicts update")

    def get_verdict(self, key: MxFlowKey) -> FlowVerdict | None:
        v = MxVerdict()
        if _libbpf().bpf_map_lookup_elem(self.fds["verdicts"], ct.byref(key), ct.byref(v)) < 0:
            return None
        return FlowVerdict.from_struct(v)

    def pop_verdict(self, key: MxFlowKey) -> FlowVerdict | None:
        """Remove a flow's entry and return its final counters (None if absent)."""
        lib, fd = _libbpf(), self.fds["verdicts"]
        v = MxVerdict()
        if lib.bpf_map_lookup_and_delete_elem(fd, ct.byref(key), ct.byref(v)) == 0:
            return FlowVerdict.from_struct(v)
        err = ct.get_errno()
        if err == errno.ENOENT:
            return None
        # kernels without LOOKUP_AND_DELETE on hash maps: two steps
        if lib.bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(v)) < 0:
            return None
        lib.bpf_map_delete_elem(fd, ct.byref(key))
        return FlowVerdict.from_struct(v)

    def verdicts(self) -> Iterator[tuple[MxFlowKey, FlowVerdict]]:
        """Every entry (a snapshot per entry; the kernel may add or evict meanwhile)."""
        for k, v in self._items("verdicts", MxFlowKey, MxVerdict):
            yield k, FlowVerdict.from_struct(v)

    def verdict_count(self) -> int:
        return sum(1 for _ in self._keys("verdicts", MxFlowKey))

    def clear_verdicts(self) -> None:
        lib, fd = _libbpf(), self.fds["verdicts"]
        for k in list(self._keys("verdicts", MxFlowKey)):
            lib.bpf_map_delete_elem(fd, ct.byref(k))

    # -- iteration -------------------------------------------------------------------------
    def _keys(self, name, ktype):
        lib, fd = _libbpf(), self.fds[name]
        prev = None
        while True:
            nxt = ktype()
            if lib.bpf_map_get_next_key(fd, None if prev is None else ct.byref(prev), ct.byref(nxt)) < 0:
                return
            yield nxt
            prev = nxt

    def _items(self, name, ktype, vtype):
        lib, fd = _libbpf(), self.fds[name]
        for k in self._keys(name, ktype):
            v = vtype()
            if lib.bpf_map_lookup_elem(fd, ct.byref(k), ct.byref(v)) == 0:
                yield k, v


def _action(action: int | str) -> int:
    if isinstance(action, str):
        try:
            return {"bypass": MX_ACTION_BYPASS, "drop": MX_ACTION_DROP}[action.lower()]
        except KeyError:
            raise ValueError("verdict action must be 'bypass' or 'drop', got %r" % action) from None
    if action not in (MX_ACTION_BYPASS, MX_ACTION_DROP):
        raise ValueError("verdict action must be MX_ACTION_BYPASS or MX_ACTION_DROP, got %r" % action)
    return int(action)


class LoadedProgram:
    """mosxdp.c compiled and loaded (not attached): prog fd and maps. Close when done;
    closing does not detach anything attached (the kernel holds its own reference)."""

    def __init__(self, bpf, func):
        self.bpf = bpf
        self.prog_fd: int = func.fd
        self.prog_id: int = _prog_info(func.fd).id
        self.maps = MosxdpMaps({n: bpf[n.encode()].map_fd for n in MosxdpMaps.NAMES})
        self.tables = {n: bpf[n.encode()] for n in MosxdpMaps.NAMES}

    def close(self) -> None:
        if self.bpf is not None:
            self.maps.fds = {}
            with contextlib.suppress(Exception):
                self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "LoadedProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compile_program(filter_c_expr: str | None = None, *, extra_cflags: tuple[str, ...] = ()) -> LoadedProgram:
    """Compile bpf/mosxdp.c with the given filter and load its entry point."""
    check_environment()
    BPF = _import_bcc()
    build = tempfile.mkdtemp(prefix="mosxdp-build-")
    try:
        Path(build, "mx_filter.h").write_text(filter_header_text(filter_c_expr))
        cflags = ["-I" + build, "-I" + str(BPF_DIR), "-Wno-unused-function", *extra_cflags]
        err: Exception | None = None
        with _capture_stderr() as errs:
            try:
                bpf = BPF(src_file=str(BPF_DIR / "mosxdp.c").encode(), cflags=cflags)
            except Exception as e:
                err = e
        if err is not None:
            hint = (" (the monitor filter expression was: %s)" % filter_c_expr) if filter_c_expr else ""
            raise XdpError("compiling %s failed%s:\n%s"
                           % (BPF_DIR / "mosxdp.c", hint, errs[0].strip()[-4000:])) from err
        _replay(errs[0])
        with _capture_stderr() as errs:
            try:
                func = bpf.load_func(MAIN_FUNC.encode(), BPF.XDP)
            except Exception as e:
                err = e
        if err is not None:
            bpf.cleanup()
            raise XdpError("the kernel refused the XDP program (%s); verifier log tail:\n%s"
                           % (err, errs[0].strip()[-4000:])) from err
        _replay(errs[0])
        return LoadedProgram(bpf, func)
    finally:
        shutil.rmtree(build, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# netlink: interfaces and XDP attachment
# ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _iproute(netns: str | None = None):
    try:
        from pyroute2 import IPRoute
    except ImportError as e:
        raise XdpError("pyroute2 is not importable (%s): install mosxdp with its dependencies "
                       "(scripts/setup.sh, or pip install -e .)" % e) from e
    ipr = IPRoute(netns=netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _ifindex(ipr, ifname: str, netns: str | None = None) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        where = " in network namespace %r" % netns if netns else ""
        raise XdpError("unknown interface %r%s (see `ip -br link`)" % (ifname, where))
    return idx[0]


@dataclass(frozen=True)
class XdpState:
    """What is attached to an interface."""
    ifname: str
    ifindex: int
    mode: str | None           # "native" | "generic" | "offload" | "multi" | None
    prog_ids: dict[str, int]   # mode -> program id
    prog_names: dict[str, str]

    @property
    def attached(self) -> bool:
        return bool(self.prog_ids)

    @property
    def ours(self) -> bool:
        """Every attached program is a mosxdp program."""
        return self.attached and all(n.startswith(PROG_NAME_PREFIX) for n in self.prog_names.values())

    def describe(self) -> str:
        if not self.attached:
            return "%s: no XDP program" % self.ifname
        return "%s: " % self.ifname + ", ".join(
            "%s program id %d %r" % (m, i, self.prog_names.get(m, "?")) for m, i in self.prog_ids.items())


def _state(ipr, ifname: str, ifindex: int) -> XdpState:
    msg = ipr.link("get", index=ifindex)[0]
    x = msg.get_attr("IFLA_XDP")
    ids: dict[str, int] = {}
    mode = None
    if x is not None:
        mode = _PYROUTE2_MODES.get(x.get_attr("IFLA_XDP_ATTACHED"), None)
        for attr, m in (("IFLA_XDP_DRV_PROG_ID", "native"), ("IFLA_XDP_SKB_PROG_ID", "generic"),
                        ("IFLA_XDP_HW_PROG_ID", "offload")):
            v = x.get_attr(attr)
            if v:
                ids[m] = v
        if not ids and mode in ("native", "generic", "offload") and x.get_attr("IFLA_XDP_PROG_ID"):
            ids[mode] = x.get_attr("IFLA_XDP_PROG_ID")
    names = {m: (_prog_name_by_id(i) or "?") for m, i in ids.items()}
    return XdpState(ifname, ifindex, mode, ids, names)


def xdp_state(ifname: str, *, netns: str | None = None) -> XdpState:
    """Which XDP programs are attached to ``ifname`` (in ``netns``, default: ours)."""
    with _iproute(netns) as ipr:
        return _state(ipr, ifname, _ifindex(ipr, ifname, netns))


def _set_xdp(ipr, ifindex: int, fd: int, flags: int, expected_fd: int | None = None) -> None:
    attrs = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    ipr.link("set", index=ifindex, xdp={"attrs": attrs})


def _detach_mode(ipr, ifindex: int, mode: str, expected_fd: int | None = None) -> None:
    flags = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE,
             "offload": XDP_FLAGS_HW_MODE}[mode]
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    _set_xdp(ipr, ifindex, -1, flags, expected_fd)


def _attach(ipr, ifname: str, ifindex: int, prog_fd: int, mode: str, notes: list[str]) -> str:
    """Attach in "native", "generic" or "auto" (native, then generic). Returns the mode used."""
    from pyroute2.netlink.exceptions import NetlinkError
    tries = ["native", "generic"] if mode == "auto" else [mode]
    last: Exception | None = None
    for m in tries:
        try:
            _set_xdp(ipr, ifindex, prog_fd, _MODE_FLAGS[m] | XDP_FLAGS_UPDATE_IF_NOEXIST)
            return m
        except NetlinkError as e:
            last = e
            if e.code == errno.EBUSY or e.code == errno.EEXIST:
                raise XdpError("interface %r already has an XDP program attached (%s); use --force or "
                               "`mosxdp detach --iface %s`" % (ifname, e, ifname)) from e
            if mode == "auto" and m == "native":
                notes.append("%s: native XDP not available (%s); using generic (skb) mode, "
                             "slower" % (ifname, os.strerror(e.code) if e.code else e))
                log.warning(notes[-1])
                continue
            other = "generic" if m == "native" else "native"
            if e.code == errno.EOPNOTSUPP:
                raise XdpError("interface %r does not support %s XDP: use --xdp-mode %s or auto"
                               % (ifname, m, other)) from e
            if e.code in (errno.EINVAL, errno.ERANGE):
                raise XdpError(
                    "interface %r refused %s XDP (%s): usually an MTU too large for XDP, or a driver "
                    "limit (a veth needs at least as many RX queues as its peer has TX queues); "
                    "lower the MTU, or use --xdp-mode %s or auto" % (ifname, m, os.strerror(e.code), other)) from e
            raise XdpError("attaching XDP to %r in %s mode failed: %s" % (ifname, m, e)) from e
    raise XdpError("attaching XDP to %r failed: %s" % (ifname, last))


def detach(ifname: str, *, netns: str | None = None, force: bool = False) -> str | None:
    """Remove the XDP program(s) from ``ifname`` (``mosxdp detach --iface X``).

    Refuses to remove a program that is not mosxdp's unless ``force``. Returns what was
    removed, e.g. "native program id 42 'mosxdp_rx'", or None when nothing was attached
    (``xdp_state()`` gives the details beforehand).
    """
    check_privileges()
    with _iproute(netns) as ipr:
        st = _state(ipr, ifname, _ifindex(ipr, ifname, netns))
        if not st.attached:
            return None
        if not st.ours and not force:
            raise XdpError("%s is not a mosxdp program; not detaching it without --force" % st.describe())
        for m in st.prog_ids:
            _detach_mode(ipr, st.ifindex, m)
        return st.describe().split(": ", 1)[1]


def status(ifnames: list[str] | None = None, *, netns: str | None = None) -> dict:
    """JSON-able state for ``mosxdp status``: per interface, the attached programs; per
    attached mosxdp_rx program, its counters (summed over CPUs), verdict-map occupancy
    and interface configuration. ``ifnames`` None: every interface."""
    check_privileges()
    out: dict = {"interfaces": {}, "programs": {}}
    with _iproute(netns) as ipr:
        if ifnames is None:
            links = [(m.get_attr("IFLA_IFNAME"), m["index"]) for m in ipr.get_links()]
        else:
            links = [(n, _ifindex(ipr, n, netns)) for n in ifnames]
        states = [_state(ipr, n, i) for n, i in links]
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
                    "verdicts_max": bs.MX_VERDICT_ENTRIES,
                    "interfaces": {str(k): {"slot": c.slot, "egress_ifindex": c.egress_ifindex,
                                            "inline": bool(c.flags & MX_IF_INLINE),
                                            "fail_closed": bool(c.flags & MX_IF_FAIL_CLOSED),
                                            "filter_all_ip": bool(c.flags & MX_IF_FILTER_ALL_IP)}
                                   for k, c in maps.iface_configs().items()},
                }
            finally:
                maps.close()
    return out


# ---------------------------------------------------------------------------------------
# the XDP_PASS program for veth testbed endpoints
# ---------------------------------------------------------------------------------------

def _load_pass_program() -> int:
    insns = (_Insn * 2)(
        _Insn(0xB7, 0, 0, XDP_PASS),  # BPF_ALU64 | BPF_MOV | BPF_K: r0 = XDP_PASS
        _Insn(0x95, 0, 0, 0),         # BPF_JMP | BPF_EXIT
    )
    fd = _libbpf().bpf_prog_load(BPF_PROG_TYPE_XDP, PASS_PROG_NAME.encode(), b"GPL", insns, 2, None)
    return _check(fd, "loading the XDP_PASS program")


class PassProgram:
    """An XDP_PASS program attached to one interface; ``detach()`` or use as a context manager."""

    def __init__(self, ifname: str, ifindex: int, netns: str | None, mode: str, fd: int):
        self.ifname, self.ifindex, self.netns, self.mode, self.fd = ifname, ifindex, netns, mode, fd

    def detach(self) -> None:
        if self.fd < 0:
            return
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            with _iproute(self.netns) as ipr:
                with contextlib.suppress(NetlinkError):
                    _detach_mode(ipr, self.ifindex, self.mode, expected_fd=self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PassProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_pass_program(ifname: str, *, netns: str | None = None, mode: str = "native") -> PassProgram:
    """Attach an XDP_PASS program (named mosxdp_pass) to ``ifname``.

    A veth only receives frames redirected into it (XDP_REDIRECT from its peer) when the
    receiving end has an XDP program: attach this to the endpoints of a veth testbed.
    ``mode``: "native" (what veth needs), "generic" or "auto".
    """
    check_privileges()
    fd = _load_pass_program()
    try:
        with _iproute(netns) as ipr:
            idx = _ifindex(ipr, ifname, netns)
            st = _state(ipr, ifname, idx)
            if st.attached:
                if not st.ours:
                    raise XdpError("%s; use `mosxdp detach --iface %s --force`" % (st.describe(), ifname))
                for m in st.prog_ids:
                    _detach_mode(ipr, idx, m)
            used = _attach(ipr, ifname, idx, fd, mode, [])
        return PassProgram(ifname, idx, netns, used, fd)
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------
# RX queues
# ---------------------------------------------------------------------------------------

_SIOCETHTOOL = 0x8946
_ETHTOOL_GCHANNELS = 0x3C


def num_rx_queues(ifname: str) -> int:
    """Active RX queues of ``ifname`` in this network namespace (one AF_XDP socket each)."""
    # ethtool channels: rx-only + combined (veth reports rx, NICs usually combined)
    try:
        req = struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8))
        buf = ct.create_string_buffer(req, len(req))
        ifr = struct.pack("16sP16x", ifname.encode()[:15], ct.addressof(buf))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifr)
        vals = struct.unpack("9I", buf.raw)
        n = vals[5] + vals[8]  # rx_count + combined_count
        if n > 0:
            return n
    except OSError:
        pass
    try:
        q = Path("/sys/class/net", ifname, "queues")
        if Path("/sys/class/net", ifname, "ifindex").read_text().strip() == str(socket.if_nametoindex(ifname)):
            n = sum(1 for p in q.iterdir() if p.name.startswith("rx-"))
            if n > 0:
                return n
    except OSError:
        pass
    socket.if_nametoindex(ifname)  # raises OSError for an unknown interface
    return 1


# ---------------------------------------------------------------------------------------
# XdpProgram
# ---------------------------------------------------------------------------------------

class XdpProgram:
    """mosxdp's XDP program on a set of interfaces, as a context manager.

    ``ifaces``: monitored interfaces; their order gives the slots (XSKMAP blocks).
    ``peers``: inline pairs {"A": "B"}: frames of A take the kernel path out of B and B's
    out of A (a peer missing from ``ifaces`` is appended). Interfaces without a peer are
    passive (kernel path = XDP_PASS).
    ``mode``: "native", "generic" or "auto" (native, else generic with a note).
    ``fail_closed``: no socket bound for a frame meant for user space -> XDP_DROP.
    ``filter_c_expr``: C expression over ``struct mx_flow_view *v``; None = all TCP.
    ``force``: replace a foreign XDP program (a stale mosxdp one is always replaced).
    ``keep_attached``: leave the program attached on exit too (fail-open after we stop).
    ``passive_bypass``: "pass" or "consume": what a BYPASS verdict does on a passive interface.
    ``filter_all_ip``: evaluate the filter on every parsed IP frame, not only TCP (raw
    monitor sockets whose filters can match UDP/ICMP); non-TCP frames it matches go to
    the sockets.
    """

    def __init__(self, ifaces: list[str], *, peers: dict[str, str] | None = None,
                 mode: str = "native", fail_closed: bool = False, filter_c_expr: str | None = None,
                 force: bool = False, keep_attached: bool = False, passive_bypass: str = "pass",
                 filter_all_ip: bool = False):
        if mode not in ("native", "generic", "auto"):
            raise XdpError("XDP mode must be one of native, generic, auto; got %r" % (mode,))
        if passive_bypass not in ("pass", "consume"):
            raise XdpError("passive_bypass must be 'pass' or 'consume'; got %r" % (passive_bypass,))
        names = list(dict.fromkeys(ifaces))
        if not names:
            raise XdpError("no interface given")
        peer_of: dict[str, str] = {}
        for a, b in (peers or {}).items():
            if a == b:
                raise XdpError("interface %r cannot be its own peer" % a)
            for x, y in ((a, b), (b, a)):
                if peer_of.get(x, y) != y:
                    raise XdpError("interface %r is paired with both %r and %r" % (x, peer_of[x], y))
                peer_of[x] = y
            for x in (a, b):
                if x not in names:
                    names.append(x)
        if len(names) > MX_MAX_SLOTS:
            raise XdpError("at most %d interfaces per program, got %d" % (MX_MAX_SLOTS, len(names)))
        self.ifaces: list[str] = names
        self.peers: dict[str, str] = peer_of
        self.mode = mode
        self.fail_closed = fail_closed
        self.filter_c_expr = filter_c_expr
        self.force = force
        self.keep_attached = keep_attached
        self.passive_bypass = passive_bypass
        self.filter_all_ip = filter_all_ip
        self.slots: dict[str, int] = {n: i for i, n in enumerate(names)}
        self.ifindexes: dict[str, int] = {}
        self.modes: dict[str, str] = {}
        self.notes: list[str] = []
        self.program: LoadedProgram | None = None
        self._stack: contextlib.ExitStack | None = None
        self._setup_done = False
        self._detach_stack: contextlib.ExitStack | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "XdpProgram":
        check_privileges()
        check_environment()
        stack = contextlib.ExitStack()
        self._setup_done = False
        try:
            with _iproute() as ipr:
                self._setup(ipr, stack)
        except BaseException:
            stack.close()  # detaches whatever was attached so far, frees the program
            raise
        self._setup_done = True
        self._stack = stack
        return self

    def _setup(self, ipr, stack: contextlib.ExitStack) -> None:
        states = {}
        for n in self.ifaces:
            self.ifindexes[n] = _ifindex(ipr, n)
            states[n] = _state(ipr, n, self.ifindexes[n])
        for n, st in states.items():
            if st.attached and not st.ours and not self.force:
                raise XdpError("%s; refusing to replace it: pass --force, or remove it with "
                               "`mosxdp detach --iface %s --force`" % (st.describe(), n))
        for n in self.ifaces:
            q = num_rx_queues(n)
            if q > MX_MAX_QUEUES:
                self.notes.append("%s has %d RX queues; only queues < %d reach AF_XDP sockets"
                                  % (n, q, MX_MAX_QUEUES))
                log.warning(self.notes[-1])

        self.program = stack.enter_context(compile_program(self.filter_c_expr))
        maps = self.program.maps
        for n in self.ifaces:
            cfg = MxIfConfig(slot=self.slots[n])
            flags = MX_IF_FAIL_CLOSED if self.fail_closed else 0
            if self.filter_all_ip:
                flags |= MX_IF_FILTER_ALL_IP
            if n in self.peers:
                p = self.peers[n]
                flags |= MX_IF_INLINE
                cfg.egress_slot = self.slots[p]
                cfg.egress_ifindex = self.ifindexes[p]
                maps.set_tx_port(self.slots[p], self.ifindexes[p])
            elif self.passive_bypass == "consume":
                flags |= MX_IF_BYPASS_CONSUME
            cfg.flags = flags
            maps.set_iface_config(self.ifindexes[n], cfg)

        # detach callbacks, run before the program is freed (ExitStack: reverse order)
        self._detach_stack = contextlib.ExitStack()
        stack.callback(self._close_detach_stack)
        for n in self.ifaces:
            st = states[n]
            if st.attached:
                what = "stale mosxdp" if st.ours else "foreign (--force)"
                self.notes.append("%s: replacing %s program(s): %s" % (n, what, st.describe()))
                log.warning(self.notes[-1])
                for m in st.prog_ids:
                    _detach_mode(ipr, st.ifindex, m)
            used = _attach(ipr, n, self.ifindexes[n], self.program.prog_fd, self.mode, self.notes)
            self.modes[n] = used
            self._detach_stack.callback(self._detach_one, n, used)

    def _close_detach_stack(self) -> None:
        ds, self._detach_stack = self._detach_stack, None
        if ds is None:
            return
        if self.keep_attached and self._setup_done:
            ds.pop_all()  # stays attached, fail-open with no socket
        else:
            ds.close()

    def _detach_one(self, ifname: str, mode: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            with _iproute() as ipr:
                _detach_mode(ipr, self.ifindexes[ifname], mode, expected_fd=self.program.prog_fd)
        except NetlinkError as e:
            # someone replaced or removed our program meanwhile: leave theirs alone
            self.notes.append("%s: not detached (%s): the attached program is no longer ours" % (ifname, e))
            log.warning(self.notes[-1])

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach everything attached (unless keep_attached) and free the program."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    # -- AF_XDP side -----------------------------------------------------------------------
    @property
    def xsks_map_fd(self) -> int:
        return self._prog().maps.fds["xsks_map"]

    @property
    def prog_fd(self) -> int:
        return self._prog().prog_fd

    @property
    def prog_id(self) -> int:
        return self._prog().prog_id

    @property
    def maps(self) -> MosxdpMaps:
        return self._prog().maps

    def slot(self, ifname: str) -> int:
        try:
            return self.slots[ifname]
        except KeyError:
            raise XdpError("interface %r is not managed by this program (%s)"
                           % (ifname, ", ".join(self.ifaces))) from None

    def xsk_index(self, ifname: str, queue: int) -> int:
        """XSKMAP index of (interface, RX queue): slot * MX_MAX_QUEUES + queue."""
        if not 0 <= queue < MX_MAX_QUEUES:
            raise XdpError("RX queue %d of %r is beyond MX_MAX_QUEUES (%d)" % (queue, ifname, MX_MAX_QUEUES))
        return self.slot(ifname) * MX_MAX_QUEUES + queue

    def register_xsk(self, ifname: str, queue: int, sock_fd: int) -> int:
        """Put an AF_XDP socket (bound to ifname/queue) into the XSKMAP; returns the index."""
        idx = self.xsk_index(ifname, queue)
        self.maps.set_xsk(idx, sock_fd)
        return idx

    def unregister_xsk(self, ifname: str, queue: int) -> None:
        self.maps.clear_xsk(self.xsk_index(ifname, queue))

    def num_rx_queues(self, ifname: str) -> int:
        return num_rx_queues(ifname)

    def ifindex(self, ifname: str) -> int:
        return self.ifindexes[ifname]

    def peer(self, ifname: str) -> str | None:
        return self.peers.get(ifname)

    # -- counters and verdicts ---------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return self.maps.counters()

    def set_verdict(self, key: MxFlowKey, action: int | str) -> None:
        self.maps.set_verdict(key, action)

    def get_verdict(self, key: MxFlowKey) -> FlowVerdict | None:
        return self.maps.get_verdict(key)

    def pop_verdict(self, key: MxFlowKey) -> FlowVerdict | None:
        return self.maps.pop_verdict(key)

    def verdicts(self) -> Iterator[tuple[MxFlowKey, FlowVerdict]]:
        return self.maps.verdicts()

    def verdict_count(self) -> int:
        return self.maps.verdict_count()

    def _prog(self) -> LoadedProgram:
        if self.program is None or self.program.bpf is None:
            raise XdpError("XdpProgram is not set up (use it as a context manager)")
        return self.program
