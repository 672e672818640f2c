"""The configuration file and its validation: TOML, or mOS's own mos.conf syntax.

Every key has a default; a bad key or value is refused with one line that
names the key and what is allowed. Command-line options override the file.
"""
import math
import os
import re
import sys
from dataclasses import dataclass, fields

from .constants import MOS_OVERLAP_POLICY_FIRST, MOS_OVERLAP_POLICY_LAST
from .core.stack import StackConfig


class ConfigError(ValueError):
    pass


# Bounds of the keys. A value outside them is refused at start (a typo, or a value that
# would fail later in the run: a timer of 1e308 seconds, a UMEM of terabytes).
MAX_SECONDS = 365 * 86400            # timeouts and intervals: a year
MIN_SECONDS = 0.001                  # a positive timeout below 1 ms is a typo (0 or less: off)
MAX_RMEM = 1 << 30                   # a side's stream buffer: 1 GiB
MAX_INT32 = (1 << 31) - 1            # mOS's int fields (mtcp_getconf copies them to C ints)
MAX_MEMCAP = 1 << 50
AUTO_WORKERS = 0    # `workers = "auto"`: below 2, so anything but `mosxdp run` runs one
# The split's bucket table holds a worker per byte (engine/split_feed.py, _splitscan.c).
MAX_WORKERS = 256
MAX_FRAMES = 1 << 20                 # UMEM frames of 4 KiB: 4 GiB
MAX_RING = 1 << 20
MAX_BATCH = 1024
MAX_QUEUES = 1024
MAX_PORT = 65535
# observe_snap: a copy of 127 bytes holds the headers of common TCP segments (tcpdump -s 96
# holds IPv4's; IPv6 with timestamps needs 86); the BPF program's per-CPU scratch copy is
# bounded by the kernel's per-CPU allocation size (32 KiB).
MIN_OBSERVE_SNAP = 128
MAX_OBSERVE_SNAP = 16384
DEFAULT_OBSERVE_SNAP = 2048           # a 1500-MTU frame whole
IFNAMSIZ = 16                        # Linux: interface names are 1 to 15 bytes


def _range(minimum, maximum):
    if maximum is None:
        return f">= {minimum}"
    return f"between {minimum} and {maximum}"


def _int(minimum, maximum=None):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected an integer {_range(minimum, maximum)}")
        if value < minimum or (maximum is not None and value > maximum):
            raise ConfigError(f"{key} = {value!r}: must be {_range(minimum, maximum)}")
        return value
    return check


def _power_of_two(minimum, maximum):
    def check(key, value):
        value = _int(minimum, maximum)(key, value)
        if value & (value - 1):
            raise ConfigError(f"{key} = {value!r}: must be a power of two between {minimum} "
                              f"and {maximum} (e.g. {1 << (value.bit_length() - 1)} or "
                              f"{1 << value.bit_length()})")
        return value
    return check


def _seconds(key, value, allowed):
    """A finite number of seconds (int or float), else ConfigError naming ``allowed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} = {value!r}: expected a number of {allowed}")
    # Compared before float(): an integer beyond a float's range (mos.conf) is no overflow.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number of {allowed}")
    return value


def _percent(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} = {value!r}: expected a percentage (a number from 0 to 100)")
    if not 0 <= value <= 100:  # also refuses nan
        raise ConfigError(f"{key} = {value!r}: must be from 0 to 100")
    return float(value)


def _timeout(key, value):
    """Idle seconds: <= 0 turns the timeout off."""
    allowed = f"seconds: <= 0 turns it off, else {MIN_SECONDS} to {MAX_SECONDS}"
    value = _seconds(key, value, allowed)
    if value > 0 and not MIN_SECONDS <= value <= MAX_SECONDS:
        raise ConfigError(f"{key} = {value!r}: must be a number of {allowed}")
    return float(value) if value > 0 else float(max(value, -1))


def _interval(key, value):
    """Seconds >= 0: 0 means none."""
    allowed = f"seconds: 0, or {MIN_SECONDS} to {MAX_SECONDS}"
    value = _seconds(key, value, allowed)
    if value != 0 and not MIN_SECONDS <= value <= MAX_SECONDS:
        raise ConfigError(f"{key} = {value!r}: must be a number of {allowed}")
    return float(value)


def _bool(key, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    return value


def _choice(*allowed):
    def check(key, value):
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r}: allowed values are {', '.join(map(repr, allowed))}")
        return value
    return check


def _str(key, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} = {value!r}: expected a non-empty string")
    if "\0" in value:
        raise ConfigError(f"{key} = {value!r}: a NUL character is not allowed")
    return value


def _optional_str(key, value):
    return None if value is None else _str(key, value)


def _ifname(key, value):
    """A Linux interface name (the kernel's dev_valid_name): 1 to 15 bytes, not '.' or
    '..', no '/', ':' or whitespace."""
    if value is None:
        return None
    if (not isinstance(value, str) or not value or value in (".", "..")
            or len(value.encode("utf-8", "surrogateescape")) >= IFNAMSIZ
            or any(c in "/:" or c.isspace() or not c.isprintable() for c in value)):
        raise ConfigError(f"{key} = {value!r}: not an interface name (1 to {IFNAMSIZ - 1} "
                          "characters, no '/', ':' or spaces)")
    return value


def _queues(key, value):
    if value == "all":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUEUES:
        raise ConfigError(f"{key} = {value!r}: \"all\" or a count between 1 and {MAX_QUEUES}")
    return value


def _frame_count(key, value):
    if value is None or value == "auto":
        return None
    try:
        return _int(64, MAX_FRAMES)(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc}, or \"auto\"") from None


def _num_cores(key, value):
    return _int(1, os.cpu_count() or 1)(key, value)


def _workers(key, value):
    """Worker processes of a run: "auto" or 0 (AUTO_WORKERS: `mosxdp run` decides, see
    engine/worker_count.auto_workers) or 1 to 4 per CPU (more than the CPUs only adds
    overhead, but lets a small machine test the split)."""
    if value == "auto" or (value == AUTO_WORKERS and not isinstance(value, bool)):
        return AUTO_WORKERS
    cpus = os.cpu_count() or 1
    try:
        return _int(1, min(4 * cpus, MAX_WORKERS))(key, value)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (4 per CPU, {cpus} CPUs here, at most {MAX_WORKERS}), "
                          "or \"auto\"") from None


@dataclass
class Config:
    # [mos]: the mOS stack knobs.
    rmem_size: int = StackConfig.rmem_size
    rmem_max: int = StackConfig.rmem_max
    no_ring_buffers: bool = False
    max_concurrency: int = StackConfig.max_concurrency
    tcp_timeout: float = StackConfig.tcp_timeout
    tcp_tw_interval: float = StackConfig.tcp_tw_interval
    overlap_policy: str = "first"
    midstream_pickup: bool = False
    max_fragments: int = StackConfig.max_fragments
    on_callback_error: str = "forward"
    reassembly_memcap: int = StackConfig.reassembly_memcap
    tcp_syn_timeout: float = StackConfig.tcp_syn_timeout
    udp_timeout: float = StackConfig.udp_timeout
    icmp_timeout: float = StackConfig.icmp_timeout
    num_cores: int = 1
    # [datapath]: where frames come from and go to.
    mode: str = "offline"
    pcap: str | None = None
    write: str | None = None
    iface: str | None = None
    peer: str | None = None
    xdp_mode: str = "native"
    bind: str = "copy"
    queues: object = "all"
    frame_count: int | None = None   # UMEM frames; None ("auto"): engine/live.py's umem_frames
    ring_size: int = 2048
    batch_size: int = 64
    fail_closed: bool = False
    force: bool = False
    metrics_port: int = 0            # live: serve Prometheus metrics on 127.0.0.1:PORT (0: off)
    stats: bool = False              # print counters on stderr (mos.conf's stat_print; --stats)
    loss_warning: float = 1.0        # live: warn when more than this % of frames is lost (0: never)
    keep_privileges: bool = False    # live: keep every capability after set-up (default: drop)
    detach_on_exit: bool = False     # inline: detach at exit (default: the kernel path stays, fail-open)
    observe: bool = False            # live: the kernel forwards, Python reads copies (engine/observe.py)
    # processes the run is split over (engine/workers.py, live_workers.py); AUTO_WORKERS:
    # one per RX queue up to the CPUs live, 1 offline (engine/worker_count.py)
    workers: int = 0
    observe_snap: int = DEFAULT_OBSERVE_SNAP  # observe: a copy holds a frame's first observe_snap - 1 bytes
    full_inspection: bool = False    # every frame through the core, also of MOSX_STATE_ONLY listeners

    def stack_config(self):
        return StackConfig(
            rmem_size=0 if self.no_ring_buffers else self.rmem_size,
            rmem_max=self.rmem_max,
            max_concurrency=self.max_concurrency,
            tcp_timeout=self.tcp_timeout,
            tcp_tw_interval=self.tcp_tw_interval,
            overlap_policy=(MOS_OVERLAP_POLICY_LAST if self.overlap_policy == "last"
                            else MOS_OVERLAP_POLICY_FIRST),
            midstream_pickup=self.midstream_pickup,
            max_fragments=self.max_fragments,
            on_callback_error=self.on_callback_error,
            reassembly_memcap=self.reassembly_memcap,
            tcp_syn_timeout=self.tcp_syn_timeout,
            udp_timeout=self.udp_timeout,
            icmp_timeout=self.icmp_timeout,
        )


SECTIONS = {
    "mos": {
        "rmem_size": _int(0, MAX_RMEM),
        "rmem_max": _int(0, MAX_RMEM),
        "no_ring_buffers": _bool,
        "max_concurrency": _int(1, MAX_INT32),
        "tcp_timeout": _timeout,
        "tcp_tw_interval": _interval,
        "overlap_policy": _choice("first", "last"),
        "midstream_pickup": _bool,
        "max_fragments": _int(1, MAX_INT32),
        "on_callback_error": _choice("forward", "drop", "stop"),
        "reassembly_memcap": _int(0, MAX_MEMCAP),
        "tcp_syn_timeout": _timeout,
        "udp_timeout": _timeout,
        "icmp_timeout": _timeout,
        "num_cores": _num_cores,
    },
    "datapath": {
        "mode": _choice("offline", "inline", "passive"),
        "pcap": _optional_str,
        "write": _optional_str,
        "iface": _ifname,
        "peer": _ifname,
        "xdp_mode": _choice("native", "generic", "auto"),
        "bind": _choice("copy", "zerocopy"),
        "queues": _queues,
        "frame_count": _frame_count,
        "ring_size": _power_of_two(64, MAX_RING),
        "batch_size": _int(1, MAX_BATCH),
        "fail_closed": _bool,
        "force": _bool,
        "metrics_port": _int(0, MAX_PORT),
        "stats": _bool,
        "loss_warning": _percent,
        "keep_privileges": _bool,
        "detach_on_exit": _bool,
        "observe": _bool,
        "workers": _workers,
        "observe_snap": _power_of_two(MIN_OBSERVE_SNAP, MAX_OBSERVE_SNAP),
        "full_inspection": _bool,
    },
}
KEY_SECTION = {key: section for section, keys in SECTIONS.items() for key in keys}
assert set(KEY_SECTION) == {f.name for f in fields(Config)}


def apply(config, key, value):
    """Set one key with validation (used by the file and by overrides)."""
    section = KEY_SECTION.get(key)
    if section is None:
        raise ConfigError(f"unknown configuration key {key!r}")
    setattr(config, key, SECTIONS[section][key](f"[{section}] {key}", value))


def load_config(path=None, **overrides):
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
        if _looks_like_mos_conf(text):
            _load_mos_conf(config, path, text)
        else:
            _load_toml(config, path, text)
    for key, value in overrides.items():
        if value is not None:
            apply(config, key, value)
    # A pair read (in part) from the file names the file.
    where = f"{path}: " if path is not None and not (overrides.get("peer") is not None and
                                                     overrides.get("iface") is not None) else ""
    if config.peer is not None and config.iface is None:
        raise ConfigError(f"{where}[datapath] peer = {config.peer!r}: needs iface (--peer "
                          "needs --iface)")
    if config.peer is not None and config.peer == config.iface:
        raise ConfigError(f"{where}[datapath] peer = {config.peer!r}: must differ from iface "
                          "(inline mode forwards between two interfaces)")
    if config.observe_snap != DEFAULT_OBSERVE_SNAP and not config.observe:
        raise ConfigError(f"{where}[datapath] observe_snap = {config.observe_snap}: applies only "
                          "to the observe-only datapath (observe = true, --observe)")
    if config.pcap is None and config.write is not None:
        raise ConfigError("--write needs an offline input (--pcap)")
    if config.pcap is not None and config.write is not None and _same_file(config.pcap, config.write):
        # Opening OUT for writing truncates IN while it is being read.
        raise ConfigError(f"--write {config.write}: is the input file (--pcap); write elsewhere")
    return config


def _load_toml(config, path, text):
    import tomllib    # only for a TOML file: a few ms of every start otherwise
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML (nor a mOS 'mos {{ ... }}' block): "
                          f"{exc}") from None
    for section, table in document.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: "
                              f"{', '.join('[' + s + ']' for s in SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a [section] table")
        for key, value in table.items():
            if key not in SECTIONS[section]:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}] (known: "
                                  f"{', '.join(SECTIONS[section])})")
            try:
                apply(config, key, value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------- mOS's mos.conf
# mOS's syntax (core/src/config.c): named blocks `name { ... }` that nest, `#` comments to
# the end of a line, `key = value` lines in the `mos` block, and one entry per line in its
# tables (`netdev`: a device and its CPU mask; `nic_forward_table`: a pair of devices).
# mOS skips what it cannot read; here a line that is not of that form is refused.
_BLOCK_START = re.compile(r"\s*[A-Za-z_]\w*\s*\{")
_NAME = re.compile(r"[A-Za-z_]\w*")
# mOS keys mapped here; every other key or block of the file is named in one warning.
_MOS_INT_KEYS = ("rmem_size", "max_concurrency", "tcp_timeout", "tcp_tw_interval")


class _Block:
    __slots__ = ("name", "line", "entries", "children")

    def __init__(self, name, line):
        self.name = name
        self.line = line
        self.entries = []     # (line number, text)
        self.children = []


def _looks_like_mos_conf(text):
    """A mos.conf starts (after comments and blank lines) with `name {`; TOML never does."""
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        if line.strip():
            return _BLOCK_START.match(line) is not None
    return False


def _parse_blocks(path, text):
    root = _Block(None, 0)
    stack = [root]
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        pending = ""
        for piece in re.split(r"([{}])", line):
            if piece == "{":
                name = pending.strip()
                if not _NAME.fullmatch(name):
                    raise ConfigError(f"{path}:{number}: '{{' must follow a block name, "
                                      f"not {name!r}")
                block = _Block(name, number)
                stack[-1].children.append(block)
                stack.append(block)
                pending = ""
            elif piece == "}":
                if pending.strip():
                    stack[-1].entries.append((number, pending.strip()))
                if len(stack) == 1:
                    raise ConfigError(f"{path}:{number}: '}}' closes no block")
                stack.pop()
                pending = ""
            else:
                pending += piece
        if pending.strip():
            if len(stack) == 1:
                raise ConfigError(f"{path}:{number}: {pending.strip()!r} is outside any block")
            stack[-1].entries.append((number, pending.strip()))
    if len(stack) > 1:
        raise ConfigError(f"{path}:{stack[-1].line}: block '{stack[-1].name}' is not closed "
                          "(no matching '}')")
    return root


def _two_words(path, number, entry, expected):
    words = entry.split()
    if len(words) != 2:
        raise ConfigError(f"{path}:{number}: {expected}, not {entry!r}")
    return words


def _mos_int(path, number, key, value):
    """An integer as mOS reads it (sscanf %i): decimal, 0x hex or 0 octal, with a sign."""
    match = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", value)
    if match is None:
        raise ConfigError(f"{path}:{number}: {key} = {value!r}: expected an integer")
    digits = match.group(2)
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") and digits != "0" else 10
    return int(match.group(1) + digits, base)


def _load_mos_conf(config, path, text):
    root = _parse_blocks(path, text)
    mos_blocks = [b for b in root.children if b.name == "mos"]
    if len(mos_blocks) != 1:
        raise ConfigError(f"{path}: a mOS configuration needs one 'mos {{ ... }}' block "
                          f"(found {len(mos_blocks)})")
    (mos,) = mos_blocks
    ignored = [b.name for b in root.children if b is not mos]
    values = {}
    for number, entry in mos.entries:
        key, equals, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not _NAME.fullmatch(key) or not value:
            raise ConfigError(f"{path}:{number}: expected 'key = value' in the mos block, "
                              f"not {entry!r}")
        # As in mOS, a key given twice keeps its last value.
        if key in _MOS_INT_KEYS or key in ("no_ring_buffers", "forward"):
            values[key] = (number, _mos_int(path, number, key, value))
        elif key == "stat_print":
            values[key] = (number, value.split())
        elif key not in ignored:
            ignored.append(key)
    devices, pairs = [], []
    for block in mos.children:
        if block.name == "netdev":
            for number, entry in block.entries:
                device, mask = _two_words(path, number, entry, "a netdev entry is 'DEVICE CPU_MASK'")
                _mos_int(path, number, f"netdev {device}", mask)
                devices.append(device)
        elif block.name == "nic_forward_table":
            for number, entry in block.entries:
                pair = _two_words(path, number, entry,
                                  "a nic_forward_table entry is 'DEVICE_A DEVICE_B'")
                if pair[0] == pair[1]:
                    raise ConfigError(f"{path}:{number}: a nic_forward_table entry pairs two "
                                      f"different devices, not {entry!r}")
                pairs.append(pair)
        elif block.name not in ignored:
            ignored.append(block.name)

    def set_key(key, value, number=mos.line):
        try:
            apply(config, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from None

    for key in _MOS_INT_KEYS:
        if key in values:
            set_key(key, values[key][1], values[key][0])
    if "no_ring_buffers" in values:
        set_key("no_ring_buffers", values["no_ring_buffers"][1] != 0, values["no_ring_buffers"][0])
    if "stat_print" in values:
        set_key("stats", bool(values["stat_print"][1]), values["stat_print"][0])
    # The datapath: one monitored interface, and its partner in nic_forward_table when mOS
    # forwards between a pair (inline); a device's CPU mask has no counterpart (one core).
    forward = values.get("forward", (mos.line, 0))[1] != 0
    if pairs:
        iface, peer = pairs[0]
        ignored += [f"nic_forward_table {' '.join(pair)}" for pair in pairs[1:]]
    elif devices:
        iface, peer = devices[0], None
    else:
        iface = peer = None
    if iface is not None:
        ignored += [f"netdev {device}" for device in devices if device not in (iface, peer)]
        set_key("iface", iface)
        if forward and peer is not None:
            set_key("peer", peer)
            set_key("mode", "inline")
        else:
            if peer is not None:
                ignored.append("nic_forward_table (forward = 0)")
            set_key("mode", "passive")
    if ignored:
        print(f"mosxdp: warning: {path}: ignored (no meaning in mosxdp): {', '.join(ignored)}",
              file=sys.stderr)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
