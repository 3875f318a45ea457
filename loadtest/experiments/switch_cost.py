"""Experiment ``switch``: what one unit of concurrency costs as an OS process, an OS thread,
an asyncio task, a gmpworker G (and a greenlet when installed): a ping-pong round trip,
spawn + exit, and the memory of one parked unit."""

from __future__ import annotations

from pathlib import Path

from loadtest.experiments.micro import greenlet_missing, measure
from loadtest.experiments.model import Experiment, Metric, Outcome, Variant, compared, ratio_check

NAME = "switch"
TITLE = "Switch cost: process vs thread vs asyncio task vs gmpworker G"
CLAIM = (
    "A coroutine (asyncio task or gmpworker G) switches, spawns and parks for a fraction"
    " of what an OS thread or process costs."
)
CHEAPER = 2.0
METRICS = [
    Metric("pingpong_us", "ping-pong round trip", "µs"),
    Metric("spawn_us", "spawn + run + exit", "µs"),
    Metric("memory_bytes", "memory per parked unit", "bytes"),
]
UNITS = {
    "process": "OS process",
    "thread": "OS thread",
    "asyncio": "asyncio task",
    "native": "gmpworker G, native core (procs=1)",
    "pure": "gmpworker G, pure Python (procs=1)",
    "greenlet": "greenlet (optional)",
}
OS_UNITS = ("process", "thread")
COROUTINES = ("asyncio", "native", "pure")
ROW_KEYS = {
    impl: {"pingpong": f"pingpong.{impl}1", "spawn": f"spawn.{impl}1", "memory": f"memory.{impl}"}
    for impl in ("native", "pure")
}
"""gmpworker.bench's keys where they are not ``<section>.<unit>``."""
SECTIONS = {"pingpong_us": "pingpong", "spawn_us": "spawn", "memory_bytes": "memory"}


def row_key(section: str, unit: str) -> str:
    """The benchmark row measuring ``unit`` in ``section``."""
    return ROW_KEYS.get(unit, {}).get(section, f"{section}.{unit}")


def run(quick: bool, workdir: Path) -> Outcome:
    """Every row in one process, interleaved; one variant per unit."""
    units = [u for u in UNITS if u != "greenlet" or greenlet_missing() is None]
    keys = [row_key(section, unit) for section in SECTIONS.values() for unit in units]
    rows = {
        r["key"]: r for r in measure(keys, quick, workdir / "switch.json", workdir / "switch.log")
    }
    variants = []
    for unit in units:
        values = {m: rows[row_key(section, unit)]["value"] for m, section in SECTIONS.items()}
        if None not in values.values():  # a row gmpworker.bench skipped (native core not built)
            variants.append(Variant(unit, UNITS[unit], figures=values))
    by_key = {v.key: v.figures for v in variants}
    coroutines = [u for u in COROUTINES if u in by_key]
    checks = [
        ratio_check(
            f"{metric.label}: the cheaper OS unit costs >= {CHEAPER:g}x the dearer coroutine",
            min(by_key[u][metric.key] for u in OS_UNITS),
            max(by_key[u][metric.key] for u in coroutines),
            at_least=CHEAPER,
        )
        for metric in METRICS
    ]
    method = (
        "gmpworker.bench's own functions, rows interleaved across repeats and the median"
        " kept, in a process of their own; gmpworker as its native core and as its pure"
        " runtime, both with one P. Ping-pong: one value there and back over"
        " pipes (processes), SimpleQueue (threads), asyncio.Queue, Chan(0), or a"
        " switch (greenlet). Memory: tracemalloc growth per parked task, G or greenlet;"
        " resident-set growth per parked thread; private memory per parked forked"
        " process (smaps_rollup): each unit by the measure that sees its cost."
    )
    return compared(EXPERIMENT, method, METRICS, variants, extra_checks=checks)


EXPERIMENT = Experiment(NAME, TITLE, CLAIM, run)
