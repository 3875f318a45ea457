"""One report for every experiment run: ``report.md``, ``report.html`` (the same text, with
the plots), ``experiments.json`` (every figure) and one ``<name>.png`` per experiment."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.experiments.model import Outcome, Verdict

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_JSON = "experiments.json"
VERDICT_MARK = {
    Verdict.HOLDS: "**holds**",
    Verdict.PARTLY: "**holds only partly**",
    Verdict.DOES_NOT_HOLD: "**does not hold here**",
    Verdict.NOT_RUN: "**not run here**",
}


@dataclass(frozen=True)
class RunInfo:
    """What was run, where, and how busy the machine was."""

    command: str
    quick: bool
    machine: str
    started: str
    load_average: tuple[float, float]
    """1-minute load average before and after the whole run."""


def number(value: float | None) -> str:
    """A figure with about three significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


# --- plots -------------------------------------------------------------------------------------


def plot(outcome: Outcome, path: Path) -> Path | None:
    """Bars of each metric by variant, and the variants' time series when they have one."""
    if not outcome.variants:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(outcome.metrics) + (1 if any(v.series for v in outcome.variants) else 0)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    labels = [v.key for v in outcome.variants]
    colors = [f"C{i}" for i in range(len(labels))]
    for ax, metric in zip(flat, outcome.metrics, strict=False):
        values = [v.figures.get(metric.key, 0.0) for v in outcome.variants]
        ax.bar(labels, values, color=colors)
        better = "lower is better" if metric.lower_is_better else "higher is better"
        ax.set_title(f"{metric.label}\n({metric.unit}, {better})", fontsize=9)
        if values and min(values) > 0 and max(values) / min(values) > 100:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.grid(axis="y", alpha=0.3)
    if panels > len(outcome.metrics):
        ax = flat[len(outcome.metrics)]
        for variant, color in zip(outcome.variants, colors, strict=True):
            if variant.series:
                xs, ys = zip(*variant.series, strict=True)
                ax.plot(xs, ys, marker="o", color=color, label=variant.key)
        ax.set_title(outcome.series_title, fontsize=9)
        ax.set_xlabel("seconds since the load began", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(f"{outcome.title}: {outcome.verdict}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- text --------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def verdict_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    """One row per experiment: name, claim, verdict, the checks in short."""
    return [
        [
            f"`{o.name}`",
            o.claim,
            VERDICT_MARK[o.verdict],
            "; ".join(f"{c.text}: {number(c.ratio)}x {'✓' if c.passed else '✗'}" for c in o.checks)
            or o.why,
        ]
        for o in outcomes
    ]


def because(outcome: Outcome) -> str:
    """The verdict in words, from its checks."""
    met = [c.text for c in outcome.checks if c.passed]
    missed = [f"{c.text} (measured {number(c.ratio)}x)" for c in outcome.checks if not c.passed]
    parts = [f"{len(met)} of {len(outcome.checks)} thresholds met"]
    if met:
        parts.append("met: " + "; ".join(met))
    if missed:
        parts.append("not met: " + "; ".join(missed))
    return ". ".join(parts) + "."


def _section(index: int, outcome: Outcome) -> list[str]:
    lines = [
        f"## {index}. {outcome.title} (`{outcome.name}`): {VERDICT_MARK[outcome.verdict]}",
        "",
        f"**Claim.** {outcome.claim}",
        "",
        f"**Method.** {outcome.method}",
        "",
    ]
    if outcome.variants:
        header = ["figure", *(f"{v.key}: {v.label}" for v in outcome.variants)]
        rows = [
            [f"{m.label} ({m.unit})", *(number(v.figures.get(m.key)) for v in outcome.variants)]
            for m in outcome.metrics
        ]
        lines += [*_table(header, rows), ""]
    if outcome.checks:
        lines += [
            "**Verdict, from these thresholds:**",
            "",
            *_table(
                ["threshold", "measured ratio", "passed"],
                [[c.text, number(c.ratio), "yes" if c.passed else "no"] for c in outcome.checks],
            ),
            "",
        ]
    if outcome.why or outcome.checks:
        lines += [f"**Why {outcome.verdict}.** {outcome.why or because(outcome)}", ""]
    if outcome.proof:
        proof = json.dumps(outcome.proof, indent=2, default=str)
        lines += ["**Evidence.**", "", "```json", proof, "```", ""]
    if outcome.plot is not None:
        lines += [f"![{outcome.title}]({outcome.plot.name})", ""]
    lines += [f"_{outcome.seconds:.0f} s to run._", ""]
    return lines


def render_markdown(outcomes: Sequence[Outcome], info: RunInfo) -> str:
    """The whole report as Markdown."""
    lines = [
        "# The architecture's claims, measured",
        "",
        f"- Command: `{info.command}`{' (quick sizes: a smoke run)' if info.quick else ''}",
        f"- Started: {info.started}",
        f"- Machine: {info.machine}; 1-minute load average {info.load_average[0]:.1f} before,"
        f" {info.load_average[1]:.1f} after (other work on the machine skews every figure;"
        " the variants of one experiment ran back to back under the same conditions)",
        "- Verdicts are computed from the figures with the thresholds each experiment states:"
        " all pass: holds; some: holds only partly; none: does not hold here.",
        "",
        *_table(
            ["experiment", "claim", "verdict", "thresholds (measured ratio)"],
            verdict_rows(outcomes),
        ),
        "",
    ]
    for index, outcome in enumerate(outcomes, 1):
        lines += _section(index, outcome)
    return "\n".join(lines)


def render_html(markdown: str) -> str:
    """The Markdown report as a standalone HTML page (plots next to it)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto}"
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Experiments</title>'
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )


def as_json(outcomes: Sequence[Outcome], info: RunInfo) -> dict[str, Any]:
    """Every figure, check and verdict, for machines."""
    return {
        "run": asdict(info),
        "experiments": [
            {**asdict(o), "plot": o.plot.name if o.plot else None, "verdict": str(o.verdict)}
            for o in outcomes
        ],
    }


def write_report(out_dir: Path, outcomes: Sequence[Outcome], info: RunInfo) -> Path:
    """Plots, Markdown, HTML and JSON into ``out_dir``; the Markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for outcome in outcomes:
        outcome.plot = plot(outcome, out_dir / f"{outcome.name}.png")
    markdown = render_markdown(outcomes, info)
    (out_dir / REPORT_MD).write_text(markdown)
    (out_dir / REPORT_HTML).write_text(render_html(markdown))
    (out_dir / REPORT_JSON).write_text(json.dumps(as_json(outcomes, info), indent=1, default=str))
    return out_dir / REPORT_MD
