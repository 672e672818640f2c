"""Every configuration key and command-line option is checked at start (mosxdp/config.py,
the apps' option types): a bad value is one line naming the key or option and what is
allowed, `mosxdp run` exits 2, and nothing was created or attached. Values that used to pass
and fail later (a timeout of inf, nan or 1e308, a ring size that is not a power of two, a port
beyond 65535, a stream buffer of terabytes) are among them."""
import errno
import math
import os
from pathlib import Path

import pytest

from mosxdp import MtcpConf, cli, mtcp_destroy, mtcp_getconf, mtcp_init, mtcp_setconf
from mosxdp.config import SECTIONS, Config, ConfigError, apply, load_config

DATA = Path(__file__).resolve().parents[1] / "data"
PCAP = DATA / "reuse.pcap"

# (key, bad value, words of the one line): each key's kinds of bad value.
BAD = [
    ("tcp_timeout", math.inf, "must be a finite number of seconds"),
    ("tcp_timeout", -math.inf, "must be a finite number of seconds"),
    ("tcp_timeout", math.nan, "must be a finite number of seconds"),
    ("tcp_timeout", 1e308, "<= 0 turns it off, else 0.001 to 31536000"),
    ("tcp_timeout", 1e-300, "<= 0 turns it off, else 0.001 to 31536000"),
    ("tcp_timeout", "30", "expected a number of seconds"),
    ("tcp_syn_timeout", math.inf, "finite"),
    ("tcp_syn_timeout", math.nan, "finite"),
    ("tcp_syn_timeout", 1e308, "0.001 to 31536000"),
    ("tcp_syn_timeout", 10 ** 400, "0.001 to 31536000"),        # beyond a float (mos.conf)
    ("tcp_tw_interval", math.inf, "finite"),
    ("tcp_tw_interval", math.nan, "finite"),
    ("tcp_tw_interval", 1e308, "0, or 0.001 to 31536000"),
    ("tcp_tw_interval", -1, "0, or 0.001 to 31536000"),
    ("rmem_size", 1 << 40, "between 0 and 1073741824"),
    ("rmem_size", -1, "between 0 and 1073741824"),
    ("rmem_size", 4096.0, "expected an integer between 0 and 1073741824"),
    ("max_concurrency", 0, "between 1 and 2147483647"),
    ("max_concurrency", 1 << 31, "between 1 and 2147483647"),
    ("max_fragments", 0, "between 1 and"),
    ("reassembly_memcap", -1, "between 0 and"),
    ("reassembly_memcap", 1 << 60, "between 0 and"),
    ("num_cores", 0, f"between 1 and {os.cpu_count()}"),
    ("num_cores", (os.cpu_count() or 1) + 1, f"between 1 and {os.cpu_count()}"),
    ("ring_size", 1000, "must be a power of two between 64 and 1048576 (e.g. 512 or 1024)"),
    ("ring_size", 32, "between 64 and 1048576"),
    ("ring_size", 1 << 21, "between 64 and 1048576"),
    ("ring_size", True, "expected an integer"),
    ("observe_snap", 1000, "must be a power of two between 128 and 16384 (e.g. 512 or 1024)"),
    ("observe_snap", 96, "between 128 and 16384"),
    ("observe_snap", 1 << 15, "between 128 and 16384"),
    ("frame_count", 63, "between 64 and 1048576"),
    ("frame_count", 10 ** 8, "between 64 and 1048576"),
    ("batch_size", 0, "between 1 and 1024"),
    ("batch_size", 1025, "between 1 and 1024"),
    ("metrics_port", 70000, "between 0 and 65535"),
    ("metrics_port", -1, "between 0 and 65535"),
    ("queues", 0, '"all" or a count between 1 and 1024'),
    ("queues", "some", '"all" or a count between 1 and 1024'),
    ("iface", "a" * 16, "not an interface name (1 to 15 characters"),
    ("iface", "eth0/1", "not an interface name"),
    ("iface", "eth 0", "not an interface name"),
    ("iface", "..", "not an interface name"),
    ("iface", "", "not an interface name"),
    ("pcap", "in\0.pcap", "a NUL character is not allowed"),
    ("pcap", "", "expected a non-empty string"),
    ("overlap_policy", "newest", "allowed values are 'first', 'last'"),
    ("on_callback_error", "ignore", "allowed values are 'forward', 'drop', 'stop'"),
    ("midstream_pickup", 1, "expected true or false"),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD])
def test_bad_value_is_one_line_naming_the_key(key, value, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, **{key: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"[{'mos' if key in SECTIONS['mos'] else 'datapath'}] {key} = ")
    assert words in message, message


def test_every_default_passes_its_own_check():
    config = Config()
    for section, keys in SECTIONS.items():
        for key, check in keys.items():
            assert check(f"[{section}] {key}", getattr(config, key)) == getattr(config, key)


@pytest.mark.parametrize("key,value", [
    ("tcp_timeout", -1), ("tcp_timeout", 0), ("tcp_timeout", -1e308), ("tcp_timeout", 0.001),
    ("tcp_timeout", 31536000), ("tcp_syn_timeout", 0), ("tcp_tw_interval", 0),
    ("tcp_tw_interval", 120.5), ("rmem_size", 0), ("rmem_size", 1 << 30),
    ("ring_size", 64), ("ring_size", 1 << 20), ("metrics_port", 65535), ("queues", "all"),
    ("queues", 4), ("iface", "veth-mon.100"), ("iface", "a" * 15), ("batch_size", 1024),
])
def test_values_at_the_bounds_are_accepted(key, value):
    config = load_config(None, **{key: value})
    assert getattr(config, key) == value or (key == "tcp_timeout" and value <= 0)


def test_observe_snap_without_observe_is_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, iface="veth0", observe_snap=128)
    assert str(info.value) == ("[datapath] observe_snap = 128: applies only to the "
                               "observe-only datapath (observe = true, --observe)")


@pytest.mark.parametrize("snap", [128, 2048, 16384])
def test_observe_snap_with_observe(snap):
    from mosxdp.engine.observe import DEFAULT_SNAP
    config = load_config(None, iface="veth0", observe=True, observe_snap=snap)
    assert config.observe_snap == snap
    assert Config().observe_snap == DEFAULT_SNAP     # the engine's default is the key's


def test_a_disabled_timeout_reads_back_as_minus_one_through_getconf():
    mtcp_init(None, tcp_timeout=-1e308)
    try:
        assert mtcp_getconf(MtcpConf()).tcp_timeout == -1
    finally:
        mtcp_destroy()


@pytest.mark.parametrize("text,words", [
    ("[mos]\ntcp_timeout = inf\n", "[mos] tcp_timeout = inf: must be a finite number"),
    ("[mos]\ntcp_timeout = nan\n", "[mos] tcp_timeout = nan: must be a finite number"),
    ("[mos]\ntcp_syn_timeout = 1e308\n", "[mos] tcp_syn_timeout = 1e+308: must be a number"),
    ("[mos]\ntcp_tw_interval = -inf\n", "[mos] tcp_tw_interval = -inf"),
    ("[datapath]\nring_size = 1000\n", "[datapath] ring_size = 1000: must be a power of two"),
    ("[datapath]\nmetrics_port = 70000\n", "[datapath] metrics_port = 70000"),
    ("mos {\n\ttcp_timeout = 99999999999999999999999999\n}\n", "mos.conf:2: [mos] tcp_timeout"),
    ("mos {\n\trmem_size = 0x7fffffffffff\n}\n", "mos.conf:2: [mos] rmem_size = 140737488355327"),
    ('[datapath]\npeer = "veth1"\n', "mos.conf: [datapath] peer = 'veth1': needs iface"),
    ('[datapath]\niface = "veth1"\npeer = "veth1"\n', "peer = 'veth1': must differ from iface"),
    ("mos {\n\tforward = 1\n\tnic_forward_table {\n\t\tdpdk0 dpdk0\n\t}\n}\n",
     "mos.conf:4: a nic_forward_table entry pairs two different devices, not 'dpdk0 dpdk0'"),
])
def test_bad_values_in_files_name_the_file(tmp_path, text, words):
    path = tmp_path / "mos.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}") and words in str(info.value), str(info.value)


@pytest.mark.parametrize("overrides,words", [
    ({"iface": "veth0", "peer": "veth0"}, "[datapath] peer = 'veth0': must differ from iface"),
    ({"peer": "veth1"}, "[datapath] peer = 'veth1': needs iface"),
])
def test_interface_pairs(overrides, words):
    with pytest.raises(ConfigError, match=r"^" + words.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, **overrides)


def test_setconf_refuses_what_the_file_refuses():
    mtcp_init(None)
    try:
        conf = mtcp_getconf(MtcpConf())
        conf.rcvbuf_size = (1 << 31) - 1              # beyond the 1 GiB of a stream buffer
        with pytest.raises(OSError) as info:
            mtcp_setconf(conf)
        assert info.value.errno == errno.EINVAL and "rmem_size" in info.value.strerror
    finally:
        mtcp_destroy()


@pytest.mark.parametrize("seconds", [1e308, math.inf, math.nan, -1, 10 ** 400])
def test_settimer_refuses_what_the_clock_cannot_hold(seconds):
    from mosxdp import mtcp_create_context, mtcp_settimer
    mtcp_init(None)
    try:
        with pytest.raises(OSError) as info:
            mtcp_settimer(mtcp_create_context(0), 1, seconds, lambda *a: None)
        assert info.value.errno == errno.EINVAL
    finally:
        mtcp_destroy()


def test_workers_at_most_four_per_cpu_and_the_bucket_tables_limit(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    config = Config()
    apply(config, "workers", 256)
    assert config.workers == 256
    with pytest.raises(ConfigError, match=r"workers = 257: .*at most 256"):
        apply(config, "workers", 257)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"4 per CPU, 2 CPUs here"):
        apply(config, "workers", 9)


def test_apply_names_unknown_keys():
    with pytest.raises(ConfigError, match="unknown configuration key 'tcp_timout'"):
        apply(Config(), "tcp_timout", 3)


# ------------------------------------------------------------- through the command line
def run(capsys, *args):
    mtcp_destroy()
    try:
        code = cli.main([str(a) for a in args])
    finally:
        mtcp_destroy()
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("option,words", [
    (["--metrics-port", "70000"], "[datapath] metrics_port = 70000: must be between 0 and 65535"),
    (["--metrics-port", "port"], "argument --metrics-port: invalid int value: 'port'"),
    (["--batch-size", "5000"], "[datapath] batch_size = 5000: must be between 1 and 1024"),
    (["--iface", "veth0", "--peer", "veth0"], "peer = 'veth0': must differ from iface"),
    (["--iface", "no such"], "iface = 'no such': not an interface name"),
    (["--config", "RING"], "ring_size = 1000: must be a power of two"),
    (["--config", "TIMEOUT"], "tcp_timeout = inf: must be a finite number"),
])
def test_bad_options_exit_2_before_any_output(tmp_path, capsys, option, words):
    (tmp_path / "RING").write_text("[datapath]\nring_size = 1000\n")
    (tmp_path / "TIMEOUT").write_text("[mos]\ntcp_timeout = inf\n")
    option = [str(tmp_path / o) if o in ("RING", "TIMEOUT") else o for o in option]
    output = tmp_path / "conn.json"
    source = [] if "--iface" in option else ["--pcap", PCAP]
    code, out, err = run(capsys, "run", "connlog", *source, *option, "--output", output)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("mosxdp: error: ") and words in err, err
    assert not output.exists()                       # the app's set-up never ran


def test_a_missing_interface_is_one_line_before_any_output(tmp_path, capsys):
    output = tmp_path / "conn.json"
    code, _, err = run(capsys, "run", "connlog", "--iface", "mosxdp-none0", "--output", output)
    assert code == 2
    assert err == ("mosxdp: error: --iface mosxdp-none0: no such interface in this network "
                   "namespace (ip link shows them)\n")
    assert not output.exists()


def test_a_bad_capture_is_one_line_before_any_output(tmp_path, capsys):
    bad = tmp_path / "notes.pcap"
    bad.write_text("not a capture\n")
    output = tmp_path / "conn.json"
    code, _, err = run(capsys, "run", "connlog", "--pcap", bad, "--output", output)
    assert code == 1
    assert err == f"mosxdp: error: {bad}: not a pcap or pcapng file (magic 0x6e6f7420)\n"
    assert not output.exists()
