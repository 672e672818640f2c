"""mOS's own mos.conf syntax, accepted by mtcp_init (and --config) besides TOML.

tests/data/mos.conf is the sample mOS's setup.sh writes from its .standalone-template.conf
for two DPDK ports; MAN_PAGE is the example of mtcp_init(3) (an `application` block, a
nic_forward_table pair) with the template's advanced options uncommented.
"""
from pathlib import Path

import pytest

from mosxdp import MtcpConf, mtcp_destroy, mtcp_getconf, mtcp_init
from mosxdp.config import ConfigError, load_config

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mos.conf"

MAN_PAGE = """\
#######################
# APPLICATION OPTIONS #
#######################
# application to run
application {
	type = end
	run = epwget
	core_mask = 0x000F
}

mos {
	forward = 1
	nb_mem_channels = 4
	netdev {
		dpdk0 0x000F
		dpdk1 0x000F
	}
	stat_print = dpdk0 dpdk1
	mos_log = logs/
	# dpdk0 and dpdk1 will forward traffic in either direction
	nic_forward_table {
		dpdk0 dpdk1
	}
	max_concurrency = 5000   # per core
	no_ring_buffers = 1
	rmem_size = 0x4000
	wmem_size = 8192
	tcp_tw_interval = 030
	tcp_timeout = -1
}
"""


def write(tmp_path, text, name="mos.conf"):
    path = tmp_path / name
    path.write_text(text)
    return path


def warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if "warning" in line]


def test_the_sample_loads_through_mtcp_init(capsys):
    assert mtcp_init(str(SAMPLE)) == 0
    try:
        conf = mtcp_getconf(MtcpConf())
        assert (conf.max_concurrency, conf.rcvbuf_size, conf.tcp_timeout, conf.tcp_timewait) == \
            (100000, 262144, 30, 0)   # the sample sets none of them: mosxdp's defaults
    finally:
        mtcp_destroy()
    (line,) = warnings(capsys)
    # Each key without a meaning here, once, in one line.
    assert line == (f"mosxdp: warning: {SAMPLE}: ignored (no meaning in mosxdp): "
                    "nb_mem_channels, mos_log, arp_table, route_table, netdev dpdk1")


def test_the_sample_maps_its_devices_and_stat_print(capsys):
    config = load_config(str(SAMPLE))
    # forward = 1 but an empty nic_forward_table: no pair to be inline between.
    assert (config.mode, config.iface, config.peer, config.stats) == ("passive", "dpdk0", None, True)


def test_the_man_page_example(tmp_path, capsys):
    config = load_config(str(write(tmp_path, MAN_PAGE)))
    assert (config.mode, config.iface, config.peer) == ("inline", "dpdk0", "dpdk1")
    assert config.max_concurrency == 5000
    assert config.rmem_size == 0x4000 and config.no_ring_buffers
    assert config.stack_config().rmem_size == 0          # no_ring_buffers: no stream buffers
    assert config.tcp_tw_interval == 24                  # 030: octal, as mOS's sscanf %i
    assert config.tcp_timeout == -1                      # disabled
    (line,) = warnings(capsys)
    assert line.endswith("ignored (no meaning in mosxdp): application, nb_mem_channels, "
                         "mos_log, wmem_size")


def test_forward_0_is_passive_on_the_pair_s_first_device(tmp_path, capsys):
    text = MAN_PAGE.replace("forward = 1", "forward = 0")
    config = load_config(str(write(tmp_path, text)))
    assert (config.mode, config.iface, config.peer) == ("passive", "dpdk0", None)
    assert "nic_forward_table (forward = 0)" in warnings(capsys)[0]


def test_no_netdev_leaves_the_datapath_alone_and_command_line_wins(tmp_path, capsys):
    path = write(tmp_path, "mos {\n\trmem_size = 8192\n\ttcp_timeout = 5\n}\n")
    config = load_config(str(path), rmem_size=4096)
    assert (config.mode, config.iface, config.rmem_size, config.tcp_timeout) == \
        ("offline", None, 4096, 5)
    assert warnings(capsys) == []


def test_a_key_given_twice_keeps_the_last_value(tmp_path):
    path = write(tmp_path, "mos {\n rmem_size = 8192\n rmem_size = 16384\n}\n")
    assert load_config(str(path)).rmem_size == 16384


def test_toml_still_loads(tmp_path):
    path = write(tmp_path, "# mos { } in a comment is not a block\n[mos]\nrmem_size = 1024\n",
                 "c.toml")
    assert load_config(str(path)).rmem_size == 1024


@pytest.mark.parametrize("text,message", [
    ("mos {\n rmem_size = 8192\n", "mos.conf:1: block 'mos' is not closed"),
    ("mos {\n netdev {\n  dpdk0 0x1\n}\n", "mos.conf:1: block 'mos' is not closed"),
    ("mos {\n}\n}\n", "mos.conf:3: '}' closes no block"),
    ("mos {\n rmem_size = big\n}\n", "mos.conf:2: rmem_size = 'big': expected an integer"),
    ("mos {\n rmem_size = -5\n}\n", "mos.conf:2: [mos] rmem_size = -5: must be between 0 and 1073741824"),
    ("mos {\n rmem_size 8192\n}\n", "mos.conf:2: expected 'key = value' in the mos block"),
    ("mos {\n netdev {\n  dpdk0\n }\n}\n", "mos.conf:3: a netdev entry is 'DEVICE CPU_MASK'"),
    ("mos {\n nic_forward_table {\n  a b c\n }\n}\n", "mos.conf:3: a nic_forward_table entry"),
    ("mos {\n}\nforward = 1\n", "mos.conf:3: 'forward = 1' is outside any block"),
    ("mos {\n = {\n}\n", "mos.conf:2: '{' must follow a block name"),
    ("application {\n}\n", "needs one 'mos { ... }' block (found 0)"),
    ("mos {\n}\nmos {\n}\n", "needs one 'mos { ... }' block (found 2)"),
    ("hello world\n", "not valid TOML (nor a mOS 'mos { ... }' block): "
                      "Expected '=' after a key in a key/value pair (at line 1, column 7)"),
])
def test_bad_files_say_one_line_with_the_line_number(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path)) and message in str(info.value), str(info.value)
