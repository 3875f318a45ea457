"""Runs the chosen experiments one after another with a rich progress display, then writes
the report. An experiment that fails is reported as ``not run here`` with its error, and
the run goes on with the next one."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loadtest.experiments.model import Experiment, Outcome, Verdict
from loadtest.experiments.registry import BY_NAME, EXPERIMENTS
from loadtest.experiments.report import RunInfo, number, write_report
from loadtest.report import machine_description
from loadtest.runner import ROOT

DEFAULT_OUT = ROOT / "reports" / "experiments"
VERDICT_STYLE = {
    Verdict.HOLDS: "green",
    Verdict.PARTLY: "yellow",
    Verdict.DOES_NOT_HOLD: "red",
    Verdict.NOT_RUN: "dim",
}


class UnknownExperimentError(ValueError):
    """A name on the command line that no experiment has."""


def select(names: Sequence[str]) -> list[Experiment]:
    """The named experiments in report order (all of them when ``names`` is empty)."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UnknownExperimentError(
            f"no experiment named {', '.join(unknown)}; --list names them: {', '.join(BY_NAME)}"
        )
    return [e for e in EXPERIMENTS if not names or e.name in names]


def listing() -> Table:
    """``--list``: name, title and claim of every experiment."""
    table = Table(title="experiments (python -m loadtest experiments [NAME...] [--quick])")
    for column in ("name", "title", "claim"):
        table.add_column(column)
    for experiment in EXPERIMENTS:
        table.add_row(experiment.name, experiment.title, experiment.claim)
    return table


def _failed(experiment: Experiment, exc: BaseException, log: Path) -> Outcome:
    log.write_text("".join(traceback.format_exception(exc)))
    return Outcome(
        name=experiment.name,
        title=experiment.title,
        claim=experiment.claim,
        method="",
        metrics=[],
        variants=[],
        verdict=Verdict.NOT_RUN,
        why=f"the run failed: {type(exc).__name__}: {str(exc)[:500]} (traceback in {log})",
        failed=True,
    )


def run_one(experiment: Experiment, quick: bool, workdir: Path) -> Outcome:
    """One experiment; its failure becomes its outcome."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        outcome = experiment.run(quick, workdir)
    except Exception as exc:
        outcome = _failed(experiment, exc, workdir / "error.txt")
    outcome.seconds = time.monotonic() - started
    return outcome


def summary(outcomes: Sequence[Outcome]) -> Table:
    """The verdicts as a rich table."""
    table = Table(title="verdicts")
    for column in ("experiment", "verdict", "thresholds (measured ratio)"):
        table.add_column(column)
    for o in outcomes:
        checks = "; ".join(f"{c.text}: {number(c.ratio)}x" for c in o.checks) or o.why[:200]
        table.add_row(o.name, f"[{VERDICT_STYLE[o.verdict]}]{o.verdict}[/]", checks)
    return table


def run(
    names: Sequence[str], quick: bool, out_dir: Path, command: str, console: Console
) -> tuple[list[Outcome], Path]:
    """Run the experiments, show progress and the verdicts; write the report."""
    chosen = select(names)
    load_before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    outcomes = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("experiments", total=len(chosen))
        for experiment in chosen:
            progress.update(task, description=f"{experiment.name}: {experiment.title}")
            outcome = run_one(experiment, quick, out_dir / "work" / experiment.name)
            outcomes.append(outcome)
            progress.console.print(
                f"[{VERDICT_STYLE[outcome.verdict]}]{outcome.verdict}[/]  {experiment.name}"
                f" ({outcome.seconds:.0f} s)"
            )
            progress.advance(task)
    info = RunInfo(
        command, quick, machine_description(), started, (load_before, os.getloadavg()[0])
    )
    report = write_report(out_dir, outcomes, info)
    console.print(summary(outcomes))
    console.print(f"report: {report} (and {report.with_suffix('.html').name}, experiments.json)")
    return outcomes, report
