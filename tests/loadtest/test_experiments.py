"""End to end: ``python -m loadtest experiments NAME --quick`` for every experiment, against
the real local services (each variant on a stack, database, vhost and key prefix of its
own). The report must carry every figure, present and positive (zero only where a count
may rightly be zero), in the Markdown, the HTML and the JSON, and a verdict computed from
stated thresholds. No test asserts which variant wins: that is the report's job."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest.experiments.model import Verdict
from loadtest.experiments.registry import EXPERIMENTS
from loadtest.experiments.report import REPORT_HTML, REPORT_JSON, REPORT_MD, number
from tests.support import require

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "experiments", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_list_names_every_experiment() -> None:
    proc = _run(["--list"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    for experiment in EXPERIMENTS:
        assert experiment.name in proc.stdout


def test_an_unknown_name_is_refused() -> None:
    proc = _run(["no-such-experiment", "--quick"], timeout=60)
    assert proc.returncode == 2
    assert "no experiment named no-such-experiment" in " ".join(proc.stdout.split())


def _check_figures(experiment: dict[str, Any]) -> None:
    metrics = experiment["metrics"]
    assert metrics and len(experiment["variants"]) >= 2
    for variant in experiment["variants"]:
        for metric in metrics:
            value = variant["figures"].get(metric["key"])
            where = f"{experiment['name']}/{variant['key']}/{metric['key']}"
            assert isinstance(value, int | float) and math.isfinite(value), where
            assert value >= 0 if metric["may_be_zero"] else value > 0, f"{where} = {value}"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [e.name for e in EXPERIMENTS])
def test_quick_run_reports_every_figure(name: str, tmp_path: Path) -> None:
    proc = _run([name, "--quick", "--out", str(tmp_path)], timeout=220)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    [experiment] = report["experiments"]
    assert experiment["name"] == name and not experiment["failed"], experiment["why"]
    assert experiment["verdict"] in {str(v) for v in Verdict}
    assert experiment["claim"] and experiment["method"]
    markdown = (tmp_path / REPORT_MD).read_text()
    html = (tmp_path / REPORT_HTML).read_text()
    assert experiment["claim"] in markdown
    assert experiment["verdict"] in markdown and experiment["verdict"] in html

    if experiment["verdict"] == Verdict.NOT_RUN:
        # Only the swap comparison may be impossible here; it must say why and show proof.
        assert name == "swap" and experiment["why"], experiment
        if experiment["variants"]:
            _check_figures(experiment)
            policies = {v["key"]: v["figures"]["swap_forbidden"] for v in experiment["variants"]}
            assert policies == {"forbidden": 1.0, "allowed": 0.0}
        else:
            require(False, f"no Docker engine for the swap proof: {experiment['why']}")
        return
    _check_figures(experiment)
    assert experiment["checks"], "a verdict needs stated thresholds"
    for check in experiment["checks"]:
        assert check["text"] in markdown
        assert check["ratio"] is None or check["ratio"] >= 0
    plot = tmp_path / experiment["plot"]
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert experiment["plot"] in markdown and experiment["plot"] in html
    for variant in experiment["variants"]:  # the table shows what the JSON holds
        row_values = [number(variant["figures"][m["key"]]) for m in experiment["metrics"]]
        assert all(f" {value} |" in markdown for value in row_values), (variant, row_values)
