"""Experiment ``handoff``: a 1 ms ticker's lateness while 64 tasks block 50 ms each in a
system call: gmpworker with one P (the blocked M hands its P off) against asyncio with the
same blocking call in the task, and asyncio with the call moved to a thread."""

from __future__ import annotations

from pathlib import Path

from gmpworker.bench import BLOCK_S, TICK_S
from loadtest.experiments.micro import measure
from loadtest.experiments.model import (
    Check,
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
IMPLEMENTATIONS = {"native": "native core", "pure": "pure Python"}
METRICS = [Metric("lateness_p99_ms", "ticker p99 lateness during the storm", "ms")]
VARIANTS = {
    **{
        f"isolation.{impl}1": (impl, f"gmpworker {name}, procs=1, gmp.syscall(time.sleep)")
        for impl, name in IMPLEMENTATIONS.items()
    },
    "isolation.direct": ("asyncio", "asyncio, time.sleep in the task"),
    "isolation.to_thread": ("to_thread", "asyncio.to_thread(time.sleep)"),
}


def checks_of(impl: str, variants: list[Variant]) -> list[Check]:
    """The claim's two thresholds for one gmpworker implementation that ran."""
    better = Threshold(
        f"asyncio's lateness is >= 10x gmpworker {impl}'s",
        ("asyncio", "lateness_p99_ms"),
        (impl, "lateness_p99_ms"),
        10.0,
    )
    gmp = next(v.figures["lateness_p99_ms"] for v in variants if v.key == impl)
    bound = ratio_check(
        f"gmpworker {impl}'s lateness is under {LATENESS_BOUND_MS:g} ms (bound / measured)",
        LATENESS_BOUND_MS,
        gmp,
        at_least=1.0,
    )
    return [better.check(variants), bound]


def run(quick: bool, workdir: Path) -> Outcome:
    """gmpworker.bench's blocking-storm rows (procs=1, asyncio, to_thread), interleaved."""
    rows = measure(list(VARIANTS), quick, workdir / "handoff.json", workdir / "handoff.log")
    variants = [
        Variant(*VARIANTS[r["key"]], figures={"lateness_p99_ms": r["value"]})
        for r in rows
        if r["value"] is not None
    ]
    ran = {v.key for v in variants}
    checks = [c for impl in IMPLEMENTATIONS if impl in ran for c in checks_of(impl, variants)]
    method = (
        f"gmpworker.bench's blocking-storm rows: a {TICK_S * 1000:g} ms ticker runs while"
        f" {8 if quick else 64} tasks each block {BLOCK_S * 1000:g} ms in time.sleep; the"
        " figure is the p99 lateness of the ticks that overlap the storm (median over"
        " interleaved repeats). asyncio.to_thread is the usual asyncio remedy, shown for"
        " reference."
    )
    return compared(EXPERIMENT, method, METRICS, variants, extra_checks=checks)


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
