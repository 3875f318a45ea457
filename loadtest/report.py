"""The report folder: ``report.md`` (tables), ``spike.png`` (the run over time),
``summary.json`` (the same figures for machines) next to locust's own ``locust.html``."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.measure import per_second
from loadtest.records import Recorded
from loadtest.schedule import SpikeConfig
from loadtest.verifier import Sample, Verdict

REPORT_FILE = "report.md"
PLOT_FILE = "spike.png"
SUMMARY_FILE = "summary.json"
LOCUST_HTML = "locust.html"


@dataclass(frozen=True)
class RunInfo:
    """What was run, where."""

    target: str
    config: SpikeConfig
    locust_workers: int  # 0: one local process
    machine: str
    load_average: tuple[float, float] | None = None  # 1-minute, before and after the load


def machine_description() -> str:
    """CPU model, core count and memory of this machine, for the record."""
    model = platform.processor() or platform.machine()
    memory = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
        )
        meminfo = Path("/proc/meminfo").read_text().split()
        memory = f", {int(meminfo[meminfo.index('MemTotal:') + 1]) / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the platform module's answer stands
    return f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def _fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(verdict: Verdict, info: RunInfo) -> str:
    """``report.md``: verdict, per-phase table, orders, drain and lag, cache, checks."""
    cfg = info.config
    workers = f"{info.locust_workers} workers" if info.locust_workers else "1 process"
    lines = [
        f"# Spike load test: {'PASS' if verdict.passed else 'FAIL'}",
        "",
        f"- Target: {info.target}",
        f"- Machine: {info.machine}"
        + (
            f" (1-minute load average {info.load_average[0]:.1f} before the run,"
            f" {info.load_average[1]:.1f} after: other work on the machine skews latency)"
            if info.load_average
            else ""
        ),
        f"- Shape: {cfg.baseline_users} users for {cfg.baseline_seconds:g} s, jump to"
        f" {cfg.spike_users} within {cfg.jump_seconds:g} s, hold {cfg.spike_seconds:g} s, back"
        f" to {cfg.baseline_users} for {cfg.recovery_seconds:g} s (locust: {workers})",
        "",
        "## Per phase",
        "",
    ]
    lines += _table(
        [
            "phase",
            "seconds",
            "requests",
            "req/s",
            "error rate",
            "p50",
            "p95",
            "p99",
            "503 (deliberate)",
            "other 5xx",
        ],
        [
            [
                row.phase,
                f"{row.seconds:.0f}",
                str(row.requests),
                f"{row.rps:.1f}",
                _pct(row.error_rate),
                _fmt(row.p50_ms, unit=" ms"),
                _fmt(row.p95_ms, unit=" ms"),
                _fmt(row.p99_ms, unit=" ms"),
                str(row.deliberate_503),
                str(row.unexpected_5xx),
            ]
            for row in verdict.phases
        ],
    )
    lag, drain = verdict.lag, verdict.drain
    outcomes = ", ".join(f"{code}: {n}" for code, n in verdict.order_outcomes.items())
    lines += [
        "",
        "## Orders, queue and persistence",
        "",
        f"- Orders by answer: {outcomes or 'none'} (202 accepted, 409/429 sold out or limit,"
        " 503 refused with stock restored, 0 no answer)",
        f"- Accept-to-persist lag over {lag.count} orders: p50 {_fmt(lag.p50_ms, unit=' ms')},"
        f" p95 {_fmt(lag.p95_ms, unit=' ms')}, p99 {_fmt(lag.p99_ms, unit=' ms')},"
        f" max {_fmt(lag.max_ms, unit=' ms')}",
        f"- Queue drained {_fmt(drain.after_spike_s, '.1f', ' s')} after the spike ended"
        f" (bound {drain.bound_s:g} s); every accepted order persisted"
        f" {_fmt(drain.after_load_s, '.1f', ' s')} after the load stopped",
    ]
    if verdict.cache is not None:
        by_result = ", ".join(f"{k}: {v:.0f}" for k, v in verdict.cache.lookups.items())
        lines.append(
            f"- Cache hit ratio: {_pct(verdict.cache.hit_ratio)} of {verdict.cache.total:.0f}"
            f" item lookups ({by_result})"
        )
    lines += ["", "## Invariants", ""]
    lines += _table(
        ["check", "result", "detail"],
        [[c.name, "pass" if c.passed else "**FAIL**", c.detail] for c in verdict.checks],
    )
    if verdict.thresholds:
        lines += ["", "## Thresholds", ""]
        lines += _table(
            ["threshold", "measured", "result"],
            [
                [t.threshold.text, _fmt(t.actual, ".4g"), "pass" if t.passed else "**FAIL**"]
                for t in verdict.thresholds
            ],
        )
    lines += [
        "",
        f"![the run over time]({PLOT_FILE})",
        "",
        f"Locust's report: [{LOCUST_HTML}]({LOCUST_HTML})",
        "",
    ]
    return "\n".join(lines)


def plot(path: Path, verdict: Verdict, run: Recorded, samples: Sequence[Sample]) -> None:
    """``spike.png``: users, requests/s, p99, queue depth and persisted orders over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = per_second(run.buckets)
    starts = [t.t for t in run.timeline[:1]] + [p.t for p in seconds[:1]]
    t0 = min(starts, default=0.0)
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    users, rps, latency, queue = axes

    ticks = run.timeline
    users.step(
        [t.t - t0 for t in ticks], [t.target_users for t in ticks], where="post", label="target"
    )
    users.plot([t.t - t0 for t in ticks], [t.users for t in ticks], label="running")
    users.set_ylabel("users")

    xs = [p.t + 0.5 - t0 for p in seconds]  # a bucket holds the requests started in [t, t+1)
    rps.plot(xs, [p.requests for p in seconds], label="requests/s")
    rps.plot(xs, [p.failures for p in seconds], label="failures/s", color="tab:red")
    rps.set_ylabel("requests/s")

    latency.plot(xs, [p.p99_ms for p in seconds], color="tab:purple", label="p99")
    latency.set_ylabel("p99 latency (ms)")

    sx = [s.t - t0 for s in samples]
    queue.plot(sx, [s.pending for s in samples], color="tab:orange", label="pending orders")
    queue.set_ylabel("queue depth (pending)")
    persisted = queue.twinx()
    persisted.plot(sx, [s.persisted for s in samples], color="tab:green", label="persisted orders")
    persisted.set_ylabel("persisted orders")
    queue.set_xlabel("seconds since start")

    for window in verdict.windows:
        if window.phase == "spike":
            for ax in axes:
                ax.axvspan(window.start - t0, window.end - t0, color="tab:red", alpha=0.08)
    for ax in (users, rps, latency):
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    handles = queue.get_legend_handles_labels()[0] + persisted.get_legend_handles_labels()[0]
    queue.legend(handles, [str(h.get_label()) for h in handles], loc="upper left")
    queue.grid(alpha=0.3)
    fig.suptitle("Flash-sale spike (shaded: the spike)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(verdict: Verdict, info: RunInfo) -> dict[str, Any]:
    """The report's figures as JSON-ready data."""
    return {
        "passed": verdict.passed,
        "target": info.target,
        "machine": info.machine,
        "load_average": info.load_average,
        "config": asdict(info.config),
        "phases": [{**asdict(p), "rps": p.rps, "error_rate": p.error_rate} for p in verdict.phases],
        "lag": asdict(verdict.lag),
        "drain": asdict(verdict.drain),
        "cache": None
        if verdict.cache is None
        else {"lookups": verdict.cache.lookups, "hit_ratio": verdict.cache.hit_ratio},
        "order_outcomes": verdict.order_outcomes,
        "checks": [asdict(c) for c in verdict.checks],
        "thresholds": [
            {"threshold": t.threshold.text, "actual": t.actual, "passed": t.passed}
            for t in verdict.thresholds
        ],
    }


def write_report(
    out_dir: Path, verdict: Verdict, info: RunInfo, run: Recorded, samples: Sequence[Sample]
) -> Path:
    """Write report.md, the plot and summary.json into ``out_dir``; return report.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(out_dir / PLOT_FILE, verdict, run, samples)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary(verdict, info), indent=2) + "\n")
    report = out_dir / REPORT_FILE
    report.write_text(render_markdown(verdict, info))
    return report
