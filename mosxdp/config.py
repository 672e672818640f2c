"""The configuration file (mOS's mos.conf in TOML) and its validation.

Every key has a default; a bad key or value is refused with one line that
names the key and what is allowed. Command-line options override the file.
"""
import os
import tomllib
from dataclasses import dataclass, fields

from .constants import MOS_OVERLAP_POLICY_FIRST, MOS_OVERLAP_POLICY_LAST
from .core.stack import StackConfig


class ConfigError(ValueError):
    pass


def _int(minimum=None):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected an integer")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{key} = {value!r}: must be >= {minimum}")
        return value
    return check


def _number(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} = {value!r}: expected a number of seconds")
    return float(value)


def _nonneg_number(key, value):
    value = _number(key, value)
    if value < 0:
        raise ConfigError(f"{key} = {value!r}: must be >= 0")
    return value


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
    return value


def _optional_str(key, value):
    return None if value is None else _str(key, value)


def _queues(key, value):
    if value == "all":
        return value
    return _int(1)(key, value)


@dataclass
class Config:
    # [mos]: the mOS stack knobs.
    rmem_size: int = StackConfig.rmem_size
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
    frame_count: int = 4096
    ring_size: int = 2048
    batch_size: int = 64
    fail_closed: bool = False
    force: bool = False
    metrics_port: int = 0            # live: serve Prometheus metrics on 127.0.0.1:PORT (0: off)
    keep_privileges: bool = False    # live: keep every capability after set-up (default: drop)

    def stack_config(self):
        return StackConfig(
            rmem_size=0 if self.no_ring_buffers else self.rmem_size,
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
        )


SECTIONS = {
    "mos": {
        "rmem_size": _int(0),
        "no_ring_buffers": _bool,
        "max_concurrency": _int(1),
        "tcp_timeout": _number,
        "tcp_tw_interval": _nonneg_number,
        "overlap_policy": _choice("first", "last"),
        "midstream_pickup": _bool,
        "max_fragments": _int(1),
        "on_callback_error": _choice("forward", "drop", "stop"),
        "reassembly_memcap": _int(0),
        "tcp_syn_timeout": _number,
        "num_cores": _int(1),
    },
    "datapath": {
        "mode": _choice("offline", "inline", "passive"),
        "pcap": _optional_str,
        "write": _optional_str,
        "iface": _optional_str,
        "peer": _optional_str,
        "xdp_mode": _choice("native", "generic", "auto"),
        "bind": _choice("copy", "zerocopy"),
        "queues": _queues,
        "frame_count": _int(64),
        "ring_size": _int(64),
        "batch_size": _int(1),
        "fail_closed": _bool,
        "force": _bool,
        "metrics_port": _int(0),
        "keep_privileges": _bool,
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
    if key == "batch_size" and value > 1024:
        raise ConfigError(f"[datapath] batch_size = {value}: must be <= 1024")


def load_config(path=None, **overrides):
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
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
    for key, value in overrides.items():
        if value is not None:
            apply(config, key, value)
    if config.pcap is None and config.write is not None:
        raise ConfigError("--write needs an offline input (--pcap)")
    if config.pcap is not None and config.write is not None and _same_file(config.pcap, config.write):
        # Opening OUT for writing truncates IN while it is being read (a large
        # input is mapped, and reading a truncated mapping is a SIGBUS).
        raise ConfigError(f"--write {config.write}: is the input file (--pcap); write elsewhere")
    return config


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
