"""What an experiment produces: each variant's figures, the verdict and why.

Verdicts are computed from the figures with thresholds the experiment states, never
typed in by hand: a :class:`Check` compares two figures, and :func:`judge` turns the
checks into ``holds`` (all pass), ``holds only partly`` (some) or ``does not hold here``
(none). An experiment that cannot run on this machine says so (``not run here``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Verdict(enum.StrEnum):
    """How the claim fared in this run."""

    HOLDS = "holds"
    PARTLY = "holds only partly"
    DOES_NOT_HOLD = "does not hold here"
    NOT_RUN = "not run here"


@dataclass(frozen=True)
class Metric:
    """A figure every variant of an experiment reports."""

    key: str
    label: str
    unit: str
    lower_is_better: bool = True
    may_be_zero: bool = False
    """A count or a flag, rightly 0 in some variant (no database query on a cache hit)."""


@dataclass
class Variant:
    """One side of the comparison and what it measured (``figures[metric.key]``)."""

    key: str
    label: str
    figures: dict[str, float] = field(default_factory=dict)
    series: list[list[float]] = field(default_factory=list)
    """``[x, y]`` points over time for the plot (the outcome's ``series_title`` says what)."""


@dataclass(frozen=True)
class Check:
    """One stated threshold: ``figure(a) / figure(b) >= at_least`` (or ``<= at_most``)."""

    text: str
    ratio: float | None
    passed: bool


def ratio_check(
    text: str, numerator: float | None, denominator: float | None, *, at_least: float
) -> Check:
    """``numerator / denominator >= at_least``; a zero denominator counts as an infinite ratio
    when the numerator is positive (nothing vs something)."""
    if numerator is None or denominator is None:
        return Check(text, None, False)
    if denominator <= 0:
        return Check(text, float("inf") if numerator > 0 else None, numerator > 0)
    ratio = numerator / denominator
    return Check(text, ratio, ratio >= at_least)


def judge(checks: Sequence[Check]) -> Verdict:
    """All checks pass: holds; some: partly; none: does not hold here."""
    passed = sum(c.passed for c in checks)
    if checks and passed == len(checks):
        return Verdict.HOLDS
    return Verdict.PARTLY if passed else Verdict.DOES_NOT_HOLD


@dataclass
class Outcome:
    """A finished experiment, as the report shows it."""

    name: str
    title: str
    claim: str
    method: str
    metrics: list[Metric]
    variants: list[Variant]
    verdict: Verdict
    checks: list[Check] = field(default_factory=list)
    why: str = ""
    """Why the verdict, beyond the checks (required when it is ``not run here``)."""
    series_title: str = ""
    plot: Path | None = None
    seconds: float = 0.0
    proof: dict[str, Any] = field(default_factory=dict)
    """Evidence that is not a comparison (e.g. the in-container swap policy)."""
    failed: bool = False
    """The run itself failed (``why`` says how): not a verdict on the claim."""


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: ``run(quick, workdir)`` returns its :class:`Outcome`."""

    name: str
    title: str
    claim: str
    run: Callable[[bool, Path], Outcome]


FigureRef = tuple[str, str]
"""``(variant key, figure key)``."""


@dataclass(frozen=True)
class Threshold:
    """A stated threshold between two variants' figures: ``numerator / denominator >=
    at_least``."""

    text: str
    numerator: FigureRef
    denominator: FigureRef
    at_least: float

    def check(self, variants: Sequence[Variant]) -> Check:
        """This threshold against the measured variants."""
        figures = {v.key: v.figures for v in variants}

        def figure(ref: FigureRef) -> float | None:
            return figures.get(ref[0], {}).get(ref[1])

        return ratio_check(
            self.text, figure(self.numerator), figure(self.denominator), at_least=self.at_least
        )


def compared(
    experiment: Experiment,
    method: str,
    metrics: list[Metric],
    variants: list[Variant],
    thresholds: Sequence[Threshold] = (),
    extra_checks: Sequence[Check] = (),
    series_title: str = "",
) -> Outcome:
    """The outcome of an experiment whose variants ran: checks and verdict from the figures."""
    checks = [t.check(variants) for t in thresholds] + list(extra_checks)
    return Outcome(
        name=experiment.name,
        title=experiment.title,
        claim=experiment.claim,
        method=method,
        metrics=metrics,
        variants=variants,
        verdict=judge(checks),
        checks=checks,
        series_title=series_title,
    )
