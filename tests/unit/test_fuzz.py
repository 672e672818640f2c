"""Fuzzing in the test suite (hypothesis, bounded for CI): the datapath on random and mutated
frames, the reassembly against a naive model through the whole stack, the TCP state machine
with random segment sequences on both sides, random sequences of mtcp_* calls, and the
configuration file (TOML and mos.conf) and `mosxdp run` arguments. The
targets and their invariants are in fuzzkit.py (shared with tests/unit/fuzz_atheris.py).

Each test counts the examples it ran; the counts are printed at the end of the module (and
kept in EXAMPLES). Longer runs: MOSXDP_FUZZ_SCALE=N (N times the examples), and
tests/unit/fuzz_atheris.py (coverage-guided, atheris). The parser alone (test_packet.py) and
StreamBuffer alone (test_reassembly.py, a stateful machine against a naive model) are fuzzed
in their own modules.
"""
import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzkit as kit

EXAMPLES = Counter()
# MOSXDP_FUZZ_SCALE=20 runs 20 times as many examples (a longer local run).
SCALE = float(os.environ.get("MOSXDP_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])


def examples(n):
    return max(1, int(n * SCALE))


@pytest.fixture(scope="module", autouse=True)
def report_examples(request):
    yield
    line = "fuzz examples run: " + ", ".join(f"{k} {v}" for k, v in sorted(EXAMPLES.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    else:
        print(line)


# ----------------------------------------------------------- the datapath on bad frames
PREFIXES = [b"", kit.MAC_S + kit.MAC_C + b"\x08\x00", kit.MAC_S + kit.MAC_C + b"\x86\xdd",
            kit.MAC_S + kit.MAC_C + b"\x81\x00\x00\x05\x08\x00"]


@settings(FUZZ, max_examples=examples(600))
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_datapath_on_random_bytes(blobs):
    EXAMPLES["datapath random bytes"] += 1
    kit.check_datapath(kit.handshake_frames()
                       + [PREFIXES[i % 4] + blob for i, blob in enumerate(blobs)])


@settings(FUZZ, max_examples=examples(1000))
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 80), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.lists(st.integers(0, 10), max_size=3), st.booleans())
def test_datapath_on_mutated_conversation(mutations, cuts, v6):
    """A complete connection whose frames get bytes overwritten and tails cut."""
    EXAMPLES["datapath mutated frames"] += 1
    kit.check_datapath(kit.mutated_conversation(mutations, cuts, v6))


# ------------------------------------------------- reassembly against a model, end to end
@settings(FUZZ, max_examples=examples(600))
@given(st.lists(st.tuples(st.integers(0, 600), st.integers(1, 120), st.integers(0, 3)),
                min_size=1, max_size=25),
       st.sampled_from(["first", "last"]), st.sampled_from([1, 4, 64]))
def test_stack_reassembly_matches_a_naive_model(segments, policy, batch):
    EXAMPLES["reassembly vs model"] += 1
    kit.run_reassembly_model(segments, policy, batch)


# ------------------------------------------------------ the TCP state machine, both sides
step_strategy = st.tuples(
    st.sampled_from("cs"), st.sampled_from(kit.KINDS),
    st.one_of(st.just(0), st.just(0), st.integers(-70000, 70000),
              st.integers(0, kit.MASK).map(lambda x: ("abs", x))),
    st.one_of(st.just(0), st.integers(0, 3000), st.just(1448)),
    st.sampled_from(kit.ACK_CHOICES), st.sampled_from(kit.WINDOWS),
    st.sampled_from(kit.DELAYS), st.integers(0, 1), st.integers(0, 255))
config_strategy = st.fixed_dictionaries(
    {key: st.sampled_from(values) for key, values in kit.CONFIG_CHOICES.items()})


@settings(FUZZ, max_examples=examples(1500))
@given(st.lists(step_strategy, min_size=1, max_size=30), config_strategy,
       st.sampled_from(kit.BATCHES), st.booleans(), st.integers(0, kit.MASK))
def test_tcp_state_machine_on_random_segments(steps, config, batch, handshake, isn_seed):
    EXAMPLES["tcp state machine"] += 1
    kit.run_tcp_steps(steps, config, batch, handshake, isn_seed)


# ------------------------------------------------------------------ random mtcp_* calls
call_strategy = st.tuples(st.sampled_from(sorted(kit.API_CALLS)),
                          st.lists(st.integers(0, 10 ** 6), min_size=7, max_size=7))


@settings(FUZZ, max_examples=examples(1000))
@given(st.lists(call_strategy, max_size=12), st.lists(call_strategy, max_size=12),
       st.lists(call_strategy, max_size=6))
def test_random_mtcp_calls_raise_only_oserror(before, inside, after):
    EXAMPLES["mtcp_* call sequences"] += 1
    kit.run_api_sequence(before, inside, after)


# ------------------------------------------------ the configuration file and the command line
def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value > 0 else "-inf") \
            if value in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    return str(value)


def _known_keys():
    from mosxdp.config import SECTIONS
    return SECTIONS


scalar = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, 1, -1, 64, 1000, 65536]),
                   st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=20), st.sampled_from(["all", "first", "last", "inline"]))
toml_files = st.lists(
    st.tuples(st.sampled_from(["mos", "datapath", "other"]),
              st.lists(st.tuples(st.one_of(st.sampled_from(sorted(
                  {k for keys in _known_keys().values() for k in keys})), st.from_regex(
                  r"[a-z_]{1,12}", fullmatch=True)),
                  st.one_of(scalar, st.lists(scalar, max_size=3))), max_size=6)),
    max_size=3).map(lambda sections: "".join(
        f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in items)
        for name, items in sections))
mos_conf_files = st.lists(
    st.tuples(st.sampled_from(["rmem_size", "max_concurrency", "tcp_timeout", "tcp_tw_interval",
                               "no_ring_buffers", "forward", "stat_print", "nb_mem_channels"]),
              st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str),
                        st.integers(0, 2 ** 40).map(hex), st.text(max_size=12))),
    max_size=6).map(lambda items: "mos {\n" + "".join(f"\t{k} = {v}\n" for k, v in items)
                    + "}\n")
config_files = st.one_of(toml_files.map(str.encode), mos_conf_files.map(str.encode),
                         st.binary(max_size=200), st.text(max_size=200).map(str.encode))


@settings(FUZZ, max_examples=examples(800))
@given(config_files)
def test_config_files_load_valid_or_say_one_line(tmp_path_factory, content):
    EXAMPLES["config files"] += 1
    kit.check_config_file(tmp_path_factory.getbasetemp() / "fuzz.conf", content)


@settings(FUZZ, max_examples=examples(800))
@given(st.sampled_from(kit.RUN_APPS),
       st.lists(st.tuples(st.sampled_from(kit.RUN_OPTIONS),
                          st.one_of(st.sampled_from(kit.RUN_VALUES), st.text(max_size=8).filter(
                              lambda t: "\0" not in t))), max_size=6),
       st.booleans())
def test_run_arguments_are_valid_or_one_line(app, pairs, offline):
    EXAMPLES["run arguments"] += 1
    argv = [app, "--pcap", "in.pcap"] if offline else [app]
    for option, value in pairs:
        argv += [option, value]
    kit.check_run_args(argv)
