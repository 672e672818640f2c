"""SYN flood, offline (scripts/synflood.py): spoofed SYNs with a legitimate transfer among
them. The flow table stays within max_concurrency, memory within what the limits allow
(measured), the counters say how many flows were evicted or timed out half-open, and the
legitimate transfer is monitored completely (its streams equal what was sent, CONN_END with
end_reason fin)."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "synflood.py"
_spec = importlib.util.spec_from_file_location("synflood", SCRIPT)
synflood = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synflood)

PER_FLOW = 4096            # bytes a tracked flow may cost (measured: about 2-3.5 KiB)
BOOKKEEPING = 8 << 20      # ended-socket ids (at most 65536), frames in flight, the body


def check_counters(figures, syns):
    c = figures["counters"]
    assert c["flows_created"] == c["flows_ended"] >= syns - 10     # random 4-tuples may repeat
    # Every flood flow ended by a limit (or at the end of input), never the legitimate one.
    assert c["flows_evicted"] == c["half_open_evicted"] > 0
    assert c["half_open_timeouts"] > 0
    assert c["flows_evicted"] + c["half_open_timeouts"] <= c["flows_ended"] - 1
    assert c["callback_errors"] == 0
    assert figures["peak_flows"] == figures["max_concurrency"]
    assert figures["legit_end"] == "fin" and figures["legit_complete"]
    assert figures["flows_with_data"] == 1


def test_synflood_100k_rss_stays_bounded():
    figures = synflood.flood(syns=100_000, max_concurrency=5000, memcap=1 << 20, measure=False)
    print("\n" + synflood.report(figures))
    check_counters(figures, 100_000)
    # RSS (sampled every 5000 frames): flows are bounded, so memory is; without the limits
    # the same flood takes about 210 MiB (scripts/synflood.py --uncapped).
    assert figures["rss_growth_kib"] * 1024 < 5000 * PER_FLOW + (1 << 20) + 4 * BOOKKEEPING


def test_synflood_traced_memory_under_the_cap():
    # tracemalloc makes the run about 5 times slower: a smaller flood.
    figures = synflood.flood(syns=10_000, max_concurrency=1000, memcap=1 << 20,
                             response=256 << 10, measure=True)
    print("\n" + synflood.report(figures))
    check_counters(figures, 10_000)
    assert figures["reassembly_mem_peak"] <= 1 << 20
    # Every Python allocation of the run, at its peak.
    assert figures["traced_peak_kib"] * 1024 < 1000 * PER_FLOW + (1 << 20) + BOOKKEEPING
