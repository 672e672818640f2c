"""The one ctypes binding of libbpf (libbpf.so.1): map and program syscalls without bcc.

Everything in io that touches a BPF map or program by fd goes through :func:`load`: the
XSKMAP entries of the AF_XDP sockets (:func:`xskmap_update`), the typed maps of the xdp
package, program information by id, BPF_PROG_TEST_RUN and loading a program from raw
instructions.
libbpf >= 1.0 returns a negative errno (and sets errno); :func:`check` turns that into an
``OSError`` that names the call.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os

from .errors import XdpError
from .uapi import BPF_PROG_TYPE_XDP

__all__ = [
    "load", "check", "Insn", "prog_info", "prog_name_by_id", "prog_map_ids", "map_name",
    "prog_test_run", "prog_load", "num_possible_cpus", "xskmap_update", "xskmap_delete",
]


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
    _fields_ = [(n, ct.c_uint32) for n in ("type", "id", "key_size", "value_size", "max_entries",
                                           "map_flags")] + [("name", ct.c_char * 16)]


class Insn(ct.Structure):
    """UAPI struct bpf_insn: one BPF instruction (regs: dst in the low nibble, src high)."""
    _fields_ = [("code", ct.c_uint8), ("regs", ct.c_uint8), ("off", ct.c_int16), ("imm", ct.c_int32)]


_lib = None


def load() -> ct.CDLL:
    """libbpf.so.1 with the signatures io uses (loaded once); XdpError when it is missing."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ct.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise XdpError("libbpf.so.1 not found (%s): install libbpf1 (scripts/setup.sh)" % e) from e
    vp, u32p = ct.c_void_p, ct.POINTER(ct.c_uint32)
    signatures = {
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
    for name, (args, res) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    _lib = lib
    return lib


def check(ret: int, what: str) -> int:
    """``ret`` when it is not negative, else an OSError naming ``what`` and the errno."""
    if ret < 0:
        err = ct.get_errno() or -ret
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))
    return ret


def _info(fd: int, info: ct.Structure, what: str) -> None:
    size = ct.c_uint32(ct.sizeof(info))
    check(load().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), what)


def prog_info(fd: int) -> _ProgInfo:
    """The program's id, name and map count (BPF_OBJ_GET_INFO_BY_FD)."""
    info = _ProgInfo()
    _info(fd, info, "BPF_OBJ_GET_INFO_BY_FD")
    return info


def prog_name_by_id(prog_id: int) -> str | None:
    """The name of a loaded program, or None when no program has that id."""
    fd = load().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        return prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def prog_map_ids(prog_id: int) -> list[int]:
    """The ids of the maps a loaded program uses."""
    pfd = check(load().bpf_prog_get_fd_by_id(prog_id), "BPF_PROG_GET_FD_BY_ID %d" % prog_id)
    try:
        count = prog_info(pfd).nr_map_ids
        ids = (ct.c_uint32 * max(count, 1))()
        _info(pfd, _ProgInfo(nr_map_ids=count, map_ids=ct.addressof(ids)), "prog info")
    finally:
        os.close(pfd)
    return list(ids[:count])


def map_name(fd: int) -> str | None:
    """The name of the map open at ``fd`` (None when the kernel does not say)."""
    info = _MapInfo()
    try:
        _info(fd, info, "BPF_OBJ_GET_INFO_BY_FD")
    except OSError:
        return None
    return info.name.decode(errors="replace")


def map_id(fd: int) -> int:
    """The id of the map open at ``fd``."""
    info = _MapInfo()
    _info(fd, info, "BPF_OBJ_GET_INFO_BY_FD")
    return info.id


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
    check(load().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, out.raw[:opts.data_size_out]


def prog_load(name: str, insns: list[Insn], *, prog_type: int = BPF_PROG_TYPE_XDP) -> int:
    """Load a program from raw instructions (GPL); returns its fd."""
    code = (Insn * len(insns))(*insns)
    fd = load().bpf_prog_load(prog_type, name.encode(), b"GPL", code, len(insns), None)
    return check(fd, "loading the BPF program %r" % name)


def num_possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has."""
    return check(load().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def xskmap_update(map_fd: int, index: int, sock_fd: int) -> None:
    """XSKMAP[index] = socket (see XdpProgram.xsk_index for the index)."""
    k, v = ct.c_uint32(index), ct.c_uint32(sock_fd)
    check(load().bpf_map_update_elem(map_fd, ct.byref(k), ct.byref(v), 0),
          f"XSKMAP[{index}] = fd {sock_fd}")


def xskmap_delete(map_fd: int, index: int) -> int:
    """Remove XSKMAP[index]; returns 0 or the errno (ENOENT: the slot was empty). A failed
    delete is returned, not raised: this runs while unwinding."""
    k = ct.c_uint32(index)
    if load().bpf_map_delete_elem(map_fd, ct.byref(k)) < 0:
        return ct.get_errno() or errno.EIO
    return 0
