"""Experiment ``handoff``: a 1 ms ticker's lateness while 64 tasks block 50 ms each in a
system call: gmpworker with one P (the blocked M hands its P off) against asyncio with the
same blocking call in the task, and asyncio with the call moved to a thread."""

from __future__ import annotations

from pathlib import Path

from gmpworker.bench import BLOCK_S, TICK_S
from loadtest.experiments.micro import measure
from loadtest.experiments.model import (
    Experiment,
    Metric,
    Outcome,
    Threshold,
    Variant,
    compared,
    ratio_check,
)

NAME = "handoff"
TITLE = "Hand-off on a blocking call"
CLAIM = (
    "When a goroutine blocks in a system call, gmpworker hands its P to another thread, so"
    " a ticker on procs=1 stays on time where asyncio, making the same call, stalls."
)
LATENESS_BOUND_MS = 5.0
THRESHOLDS = (
    Threshold(
        "asyncio's lateness is >= 10x gmpworker's",
        ("asyncio", "lateness_p99_ms"),
        ("gmp1", "lateness_p99_ms"),
        10.0,
    ),
)
METRICS = [Metric("lateness_p99_ms", "ticker p99 lateness during the storm", "ms")]
VARIANTS = {
    "isolation.gmp1": ("gmp1", "gmpworker, procs=1, gmp.syscall(time.sleep)"),
    "isolation.direct": ("asyncio", "asyncio, time.sleep in the task"),
    "isolation.to_thread": ("to_thread", "asyncio.to_thread(time.sleep)"),
}


def run(quick: bool, workdir: Path) -> Outcome:
    """The three rows of gmpworker.bench's blocking-storm section, interleaved."""
    rows = measure(list(VARIANTS), quick, workdir / "handoff.json", workdir / "handoff.log")
    variants = [
        Variant(*VARIANTS[r["key"]], figures={"lateness_p99_ms": r["value"]})
        for r in rows
        if r["value"] is not None
    ]
    gmp = next((v.figures["lateness_p99_ms"] for v in variants if v.key == "gmp1"), None)
    bound = ratio_check(
        f"gmpworker's lateness is under {LATENESS_BOUND_MS:g} ms (ratio: bound / measured)",
        LATENESS_BOUND_MS,
        gmp,
        at_least=1.0,
    )
    method = (
        f"gmpworker.bench's blocking-storm rows: a {TICK_S * 1000:g} ms ticker runs while"
        f" {8 if quick else 64} tasks each block {BLOCK_S * 1000:g} ms in time.sleep; the"
        " figure is the p99 lateness of the ticks that overlap the storm (median over"
        " interleaved repeats). asyncio.to_thread is the usual asyncio remedy, shown for"
        " reference."
    )
    return compared(EXPERIMENT, method, METRICS, variants, THRESHOLDS, [bound])


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
