#!/usr/bin/env python3
"""Coverage-guided fuzzing of mosxdp with atheris (libFuzzer for Python), for long runs.

The test suite runs the same targets with hypothesis, bounded for CI
(tests/unit/test_fuzz.py); the targets and their invariants live in tests/unit/fuzzkit.py.
atheris is not a test dependency; install it into the project's environment first:

    .venv/bin/pip install atheris

Then:

    .venv/bin/python tests/unit/fuzz_atheris.py TARGET [libFuzzer options] [CORPUS_DIR ...]

    TARGET     parse       parse_frame on raw bytes: only PacketError, sane offsets
               datapath    frames (raw bytes or a mutated connection) through a monitored
                           context: no exception, every frame forwarded unchanged, counters
                           add up
               reassembly  segments at random offsets with differing copies through the
                           stack: the stream equals a naive FIRST/LAST byte model
               tcp         random segments on two 4-tuples from both ends, random limits:
                           states valid, peeked bytes are what was sent, CONN_END once per
                           side and hook, nothing left at the end
               api         random mtcp_* call sequences before, inside and after a run:
                           only OSError with a valid errno
               config      a configuration file (TOML, mos.conf, or any bytes) through
                           load_config: a valid Config or one ConfigError line
               cli         `mosxdp run APP ...` arguments (options of mosxdp and of the
                           built-in apps, odd values) up to the configuration: accepted
                           into valid values, or one usage line (exit 2); nothing runs

    e.g.  tests/unit/fuzz_atheris.py tcp -atheris_runs=200000 -max_len=1024 /tmp/corpus-tcp
          tests/unit/fuzz_atheris.py datapath -max_total_time=3600

A crash (an invariant's AssertionError or any unexpected exception) stops the run and
writes the input to crash-<hash>; replay it with `tests/unit/fuzz_atheris.py TARGET crash-...`.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

try:
    import atheris
except ImportError:
    sys.exit("fuzz_atheris.py needs atheris: .venv/bin/pip install atheris")

with atheris.instrument_imports(include=["mosxdp", "fuzzkit"]):
    import fuzzkit as kit
    import mosxdp.cli  # noqa: F401  (instrumented for the cli and config targets)
    from mosxdp.core.packet import PACKET_ERROR_COUNTERS, PacketError, parse_frame

MAX_SEGMENTS = 30


def _pick(fdp, choices):
    return choices[fdp.ConsumeIntInRange(0, len(choices) - 1)]


def target_parse(data):
    try:
        pkt = parse_frame(memoryview(bytearray(data)))
    except PacketError as error:
        assert error.counter in PACKET_ERROR_COUNTERS, error.counter
        return
    assert pkt.payload_off + pkt.payload_len <= len(data)
    if pkt.ip_version:
        assert pkt.l3_off + pkt.ip_len <= len(data)
    if pkt.ip_proto == 6 and not pkt.is_fragment and pkt.ip_version:
        pkt.parse_options()


def target_datapath(data):
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        frames = kit.handshake_frames()
        for index in range(fdp.ConsumeIntInRange(0, 6)):
            prefix = (b"", kit.MAC_S + kit.MAC_C + b"\x08\x00",
                      kit.MAC_S + kit.MAC_C + b"\x86\xdd")[index % 3]
            frames.append(prefix + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 120)))
    else:
        v6 = fdp.ConsumeBool()
        mutations = [(fdp.ConsumeIntInRange(0, 10), fdp.ConsumeIntInRange(0, 80),
                      fdp.ConsumeIntInRange(0, 255)) for _ in range(fdp.ConsumeIntInRange(1, 8))]
        cuts = [fdp.ConsumeIntInRange(0, 10) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        frames = kit.mutated_conversation(mutations, cuts, v6)
    kit.check_datapath(frames)


def target_reassembly(data):
    fdp = atheris.FuzzedDataProvider(data)
    policy = _pick(fdp, ["first", "last"])
    batch = _pick(fdp, [1, 4, 64])
    segments = [(fdp.ConsumeIntInRange(0, 600), fdp.ConsumeIntInRange(1, 120),
                 fdp.ConsumeIntInRange(0, 3)) for _ in range(fdp.ConsumeIntInRange(1, 25))]
    kit.run_reassembly_model(segments, policy, batch)


def target_tcp(data):
    fdp = atheris.FuzzedDataProvider(data)
    config = {key: _pick(fdp, values) for key, values in kit.CONFIG_CHOICES.items()}
    batch = _pick(fdp, kit.BATCHES)
    handshake = fdp.ConsumeBool()
    isn_seed = fdp.ConsumeIntInRange(0, kit.MASK)
    steps = []
    for _ in range(fdp.ConsumeIntInRange(1, MAX_SEGMENTS)):
        seq_mode = fdp.ConsumeIntInRange(0, 2)
        seq = (0 if seq_mode == 0 else fdp.ConsumeIntInRange(-70000, 70000) if seq_mode == 1
               else ("abs", fdp.ConsumeIntInRange(0, kit.MASK)))
        steps.append((
            _pick(fdp, "cs"), _pick(fdp, kit.KINDS), seq,
            _pick(fdp, [0, 1, 3, 100, 1448, 3000]), _pick(fdp, kit.ACK_CHOICES),
            _pick(fdp, kit.WINDOWS), _pick(fdp, kit.DELAYS), fdp.ConsumeIntInRange(0, 1),
            fdp.ConsumeIntInRange(0, 255)))
    kit.run_tcp_steps(steps, config, batch, handshake, isn_seed)


def target_api(data):
    fdp = atheris.FuzzedDataProvider(data)
    names = sorted(kit.API_CALLS)

    def calls(most):
        return [(_pick(fdp, names), [fdp.ConsumeIntInRange(0, 10 ** 6) for _ in range(7)])
                for _ in range(fdp.ConsumeIntInRange(0, most))]
    kit.run_api_sequence(calls(12), calls(12), calls(6))


CONFIG_PATH = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mosxdp-fuzz-{os.getpid()}.conf")
CONFIG_KEYS = ("rmem_size", "tcp_timeout", "tcp_syn_timeout", "tcp_tw_interval", "ring_size",
               "frame_count", "batch_size", "metrics_port", "queues", "iface", "peer",
               "max_concurrency", "reassembly_memcap", "num_cores", "overlap_policy", "forward")


def target_config(data):
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, 2)
    if shape == 0:          # TOML-like: known sections and keys, fuzzed values
        text = "".join(
            f"[{_pick(fdp, ['mos', 'datapath'])}]\n{_pick(fdp, CONFIG_KEYS)} = "
            f"{fdp.ConsumeUnicodeNoSurrogates(24)}\n" for _ in range(fdp.ConsumeIntInRange(0, 4)))
        content = text.encode()
    elif shape == 1:        # a mos.conf block
        content = ("mos {\n" + "".join(
            f"\t{_pick(fdp, CONFIG_KEYS)} = {fdp.ConsumeUnicodeNoSurrogates(24)}\n"
            for _ in range(fdp.ConsumeIntInRange(0, 4))) + "}\n").encode()
    else:
        content = fdp.ConsumeBytes(fdp.remaining_bytes())
    kit.check_config_file(CONFIG_PATH, content)


def target_cli(data):
    fdp = atheris.FuzzedDataProvider(data)
    argv = [_pick(fdp, kit.RUN_APPS)]
    if fdp.ConsumeBool():
        argv += ["--pcap", "in.pcap"]
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        value = (_pick(fdp, kit.RUN_VALUES) if fdp.ConsumeBool()
                 else fdp.ConsumeUnicodeNoSurrogates(12).replace("\0", ""))
        argv += [_pick(fdp, kit.RUN_OPTIONS), value]
    kit.check_run_args(argv)


TARGETS = {"parse": target_parse, "datapath": target_datapath,
           "reassembly": target_reassembly, "tcp": target_tcp, "api": target_api,
           "config": target_config, "cli": target_cli}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] "
                 "[CORPUS_DIR ...]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
