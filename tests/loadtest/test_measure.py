"""Recording and measuring: buckets written by several processes merge exactly, percentiles
and phase windows come out right, and Zipf popularity is skewed and shared."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from loadtest.measure import per_second, phase_stats, phase_windows
from loadtest.popularity import Zipf, parse_ids
from loadtest.records import (
    TIMELINE_FILE,
    JsonLines,
    OrderRecord,
    RequestAggregator,
    Tick,
    load_run,
    percentile,
    round_latency,
)


def tick(t: float, phase: str, started: float | None = None) -> Tick:
    """A timeline tick with only the fields that matter here."""
    return Tick(t, t - 100, phase, t if started is None else started, 1, 1, 0.0, 0.0, None)


def test_percentiles_of_a_histogram() -> None:
    hist = Counter(dict.fromkeys(range(1, 101), 1))
    assert percentile(hist, 0.5) == 50
    assert percentile(hist, 0.95) == 95
    assert percentile(hist, 0.99) == 99
    assert percentile(hist, 1.0) == 100
    assert percentile(Counter(), 0.5) is None


@pytest.mark.parametrize(
    ("ms", "bucket"), [(3.4, 3), (99.4, 99), (123, 120), (987, 990), (1234, 1200), (12345, 12000)]
)
def test_latency_rounds_to_two_significant_digits(ms: float, bucket: int) -> None:
    assert round_latency(ms) == bucket


def test_buckets_from_two_processes_merge_per_second_and_phase(tmp_path: Path) -> None:
    for node, latency in (("a", 10.0), ("b", 30.0)):
        agg = RequestAggregator(JsonLines(tmp_path / f"requests-{node}.jsonl"))
        for i in range(10):
            agg.add(100.2 + i * 0.05, "baseline", 200, latency, False, False)
        agg.add(101.5, "spike", 503, latency, True, True)
        agg.add(101.6, "spike", 500, latency, True, False)
        agg.add(101.7, "spike", 0, latency, True, False)
        agg.flush(now=101.9)  # second 100 is closed only at 102: nothing written yet
        assert (tmp_path / f"requests-{node}.jsonl").read_text() == ""
        agg.flush()
    recorded = load_run(tmp_path)
    assert [(b.sec, b.phase, b.requests) for b in recorded.buckets] == [
        (100, "baseline", 20),
        (101, "spike", 6),
    ]
    spike = recorded.buckets[1]
    assert spike.failures == 6
    assert spike.deliberate_503 == 2
    assert spike.unexpected_5xx == 2
    assert spike.codes == Counter({"503": 2, "500": 2, "0": 2})
    assert recorded.buckets[0].latency == Counter({10: 10, 30: 10})


def test_phase_windows_and_stats(tmp_path: Path) -> None:
    timeline = [
        tick(100, "baseline"),
        tick(101, "baseline"),
        tick(102, "spike"),
        tick(103, "spike"),
        tick(104, "spike"),
        tick(106, "recovery"),
        tick(107.5, "stopped"),
    ]
    windows = phase_windows(timeline)
    assert [(w.phase, w.start, w.end) for w in windows] == [
        ("baseline", 100, 102),
        ("spike", 102, 106),
        ("recovery", 106, 107.5),
    ]
    agg = RequestAggregator(JsonLines(tmp_path / "requests-x.jsonl"))
    for i in range(100):
        agg.add(102 + i * 0.01, "spike", 202 if i else 500, float(i + 1), i == 0, False)
    for i in range(4):
        agg.add(100 + i * 0.5, "baseline", 200, 5.0, False, False)
    agg.flush()
    rows = {r.phase: r for r in phase_stats(load_run(tmp_path).buckets, windows)}
    assert list(rows) == ["baseline", "spike", "recovery", "all"]
    assert rows["spike"].rps == 25.0  # 100 requests over the 4 s window
    assert rows["spike"].error_rate == 0.01
    assert (rows["spike"].p50_ms, rows["spike"].p99_ms) == (50, 99)
    assert rows["spike"].unexpected_5xx == 1
    assert rows["baseline"].rps == 2.0
    assert rows["recovery"].requests == 0
    assert rows["all"].requests == 104
    assert rows["all"].seconds == pytest.approx(7.5)
    points = per_second(load_run(tmp_path).buckets)
    assert [(p.t, p.requests) for p in points] == [(100.0, 2), (101.0, 2), (102.0, 100)]


def test_windows_start_when_the_phase_did_not_when_the_tick_was_written() -> None:
    ticks = [tick(100.6, "baseline", 100.0), tick(101.6, "spike", 101.0), tick(102.6, "stopped")]
    assert [(w.phase, w.start, w.end) for w in phase_windows(ticks)] == [
        ("baseline", 100.0, 101.0),
        ("spike", 101.0, 102.6),
    ]


def test_a_killed_run_without_stop_tick_still_has_closed_windows() -> None:
    windows = phase_windows([tick(100, "baseline"), tick(101, "spike"), tick(102, "spike")])
    assert [(w.phase, w.start, w.end) for w in windows] == [
        ("baseline", 100, 101),
        ("spike", 101, 103),
    ]


def test_order_records_round_trip_in_time_order(tmp_path: Path) -> None:
    lines = JsonLines(tmp_path / "orders-n.jsonl")
    for t in (3.0, 1.0, 2.0):
        lines.write(OrderRecord(t, 1, 1, "u", f"k{t}", 202, 5.0, "spike", f"o{t}").__dict__)
    lines.close()
    (tmp_path / TIMELINE_FILE).write_text("")
    run = load_run(tmp_path)
    assert [o.t for o in run.orders] == [1.0, 2.0, 3.0]
    assert run.started == 0.0  # one second before the first order


def test_zipf_is_skewed_and_identical_in_every_process() -> None:
    ids = list(range(1, 1001))
    zipf, again = Zipf(ids, 1.1), Zipf(ids, 1.1)
    assert zipf.hottest(20) == again.hottest(20)
    assert zipf.hottest(3) != [1, 2, 3]  # a seeded shuffle, not the lowest ids
    rng = random.Random(5)
    draws = Counter(zipf.pick(rng) for _ in range(20_000))
    top20 = sum(draws[i] for i in zipf.hottest(20)) / 20_000
    assert top20 == pytest.approx(zipf.share_of_top(20), abs=0.02)
    assert 0.4 < top20 < 0.9  # most traffic on few items, but far from all of it
    assert draws[zipf.hottest(1)[0]] > draws[zipf.hottest(10)[-1]] * 5
    assert set(draws) <= set(ids)


def test_zipf_top_restricts_to_the_hottest() -> None:
    zipf = Zipf(range(1, 101), 1.0)  # type: ignore[arg-type]
    rng = random.Random(1)
    assert {zipf.pick(rng, top=5) for _ in range(2000)} == set(zipf.hottest(5))
    assert {zipf.pick(rng, top=1) for _ in range(50)} == set(zipf.hottest(1))


@pytest.mark.parametrize(
    ("spec", "ids"), [("1-5", [1, 2, 3, 4, 5]), ("3,8", [3, 8]), ("1-2, 9", [1, 2, 9])]
)
def test_item_id_specs(spec: str, ids: list[int]) -> None:
    assert parse_ids(spec) == ids


@pytest.mark.parametrize("spec", ["", "a-b", "1-x"])
def test_bad_item_id_specs_are_named(spec: str) -> None:
    with pytest.raises(ValueError, match="spec"):
        parse_ids(spec)
