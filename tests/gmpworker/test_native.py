"""Both implementations: the native core (gmpworker._core) and the pure-Python runtime.

This process runs the native core when it is built (``pip install`` builds it); the
whole gmpworker suite then runs again in a subprocess with ``GMPWORKER_PURE=1``, so
every test of tests/gmpworker checks both. The run-queue tests below exercise
whichever implementation is active, so they too run on both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gmp_guard import no_leaked_threads  # noqa: F401

import gmpworker as gmp
from gmpworker import native, proc
from gmpworker.runtime2 import G_FIELDS, LOCAL_RUNQ_CAP, G, P, schedt, sudog
from tests.support import require

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
PURE_CHILD = "GMPWORKER_TEST_PURE_CHILD"  # set in the subprocess that reruns the suite


def test_implementation_follows_gmpworker_pure() -> None:
    if os.environ.get("GMPWORKER_PURE", "") not in ("", "0"):
        assert native.IMPLEMENTATION == "pure" and native.core is None
        assert isinstance(P(schedt(1, 1, True), 0).runq, type(gmp.Chan().buf))
        return
    require(native.NATIVE, "gmpworker._core is not built (pip install -e . builds it)")
    assert native.IMPLEMENTATION == "native"
    assert type(P(schedt(1, 1, True), 0).runq).__module__ == "gmpworker._core"
    assert type(gmp.Chan.send).__name__ == "method_descriptor"
    # g and sudog are C structs with exactly the pure runtime's fields.
    core = native.core
    assert core is not None and G.__mro__[2] is core.g and sudog is core.sudog
    members = {k for k, v in vars(core.g).items() if type(v).__name__ == "member_descriptor"}
    assert members == set(G_FIELDS)


def test_whole_gmpworker_suite_passes_on_the_pure_runtime_too() -> None:
    if os.environ.get(PURE_CHILD) == "1":
        # This is the rerun itself: it must really be on the pure runtime.
        assert native.IMPLEMENTATION == "pure"
        return
    require(native.NATIVE, "gmpworker._core is not built: the suite already ran pure")
    env = dict(os.environ, GMPWORKER_PURE="1", **{PURE_CHILD: "1"})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gmpworker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    tail = run.stdout[-3000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and "failed" not in run.stdout, tail


# --- the run queue (Go's runqput/runqget/runqgrab), on the active implementation -------


async def _body() -> None:
    """A G body that never runs (the queue tests only move G records)."""


@pytest.fixture
def pgs() -> Iterator[tuple[schedt, P, list[G]]]:
    sched = schedt(1, 1, True)
    pp = sched.allp[0]
    gs = [G(sched, i, _body()) for i in range(1, 2 * LOCAL_RUNQ_CAP + 1)]
    yield sched, pp, gs
    for gp in gs:
        gp.coro.close()


def test_runnext_kicks_the_old_g_to_the_tail(pgs: tuple[schedt, P, list[G]]) -> None:
    _, pp, gs = pgs
    a, b, c = gs[:3]
    proc.runqput(pp, a, False)
    proc.runqput(pp, b, True)
    proc.runqput(pp, c, True)  # b goes to the tail, behind a
    assert proc.runqsize(pp) == 3 and not proc.runqempty(pp)
    got = [proc.runqget(pp) for _ in range(4)]
    assert got == [(c, True), (a, False), (b, False), (None, False)]
    assert proc.runqempty(pp)


def test_full_ring_spills_half_plus_one_to_the_global_queue(
    pgs: tuple[schedt, P, list[G]],
) -> None:
    sched, pp, gs = pgs
    for gp in gs[: LOCAL_RUNQ_CAP + 1]:
        proc.runqput(pp, gp, False)
    # runqputslow: half of the full ring (128) plus the new G go global, in order.
    assert list(sched.runq) == [*gs[: LOCAL_RUNQ_CAP // 2], gs[LOCAL_RUNQ_CAP]]
    assert len(pp.runq) == LOCAL_RUNQ_CAP // 2
    assert proc.runqget(pp) == (gs[LOCAL_RUNQ_CAP // 2], False)


def test_runqgrab_takes_half_rounded_up_then_runnext(pgs: tuple[schedt, P, list[G]]) -> None:
    _, pp, gs = pgs
    for gp in gs[:5]:
        proc.runqput(pp, gp, False)
    proc.runqput(pp, gs[5], True)
    assert proc.runqgrab(pp, True) == gs[:3]
    assert proc.runqgrab(pp, True) == gs[3:4]
    assert proc.runqgrab(pp, True) == gs[4:5]
    assert proc.runqgrab(pp, False) == []  # runnext only on the last steal try
    assert proc.runqgrab(pp, True) == [gs[5]]
    assert proc.runqempty(pp)


def test_goready_puts_the_g_in_runnext(pgs: tuple[schedt, P, list[G]]) -> None:
    sched, pp, gs = pgs
    proc.goready(gs[0], pp)
    proc.goready(gs[1], None)  # no P: the global queue
    assert gs[0].status == gs[1].status == 1  # _Grunnable
    assert proc.runqget(pp) == (gs[0], True)
    assert list(sched.runq) == [gs[1]]


def test_a_spawned_g_has_every_field_g_init_sets() -> None:
    # The native newproc fills the G record in C: it must match G.__init__ exactly.
    slots = G_FIELDS

    async def main() -> tuple[dict[str, object], dict[str, object]]:
        h = gmp.go(_body)
        sched = h.sched  # type: ignore[attr-defined]
        ref = G(sched, 0, _body())
        spawned = {s: getattr(h, s) for s in slots}
        made = {s: getattr(ref, s) for s in slots}
        ref.coro.close()
        await h
        return spawned, made

    spawned, made = gmp.run(main, procs=1)
    for varying in ("coro", "ctx", "goid"):
        del spawned[varying], made[varying]
    assert spawned == made
