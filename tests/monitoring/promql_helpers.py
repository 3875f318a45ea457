"""PromQL helpers for the monitoring tests: read panel queries, name their metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.monitoring.dashboards import DASHBOARD_DIR

# Grafana's interval variables, replaced by what a dashboard would resolve them to.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}

_KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ]
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel of one dashboard file."""

    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def resolved(self) -> str:
        """The expression with Grafana's variables replaced, as Prometheus receives it."""
        expr = self.expr
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        return expr

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref}: {self.expr}"


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON file by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def panel_queries(dashboards: dict[str, dict[str, Any]]) -> Iterator[PanelQuery]:
    """Every PromQL target of every panel."""
    for name, board in dashboards.items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield PanelQuery(name, panel["title"], target["refId"], target["expr"])


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and labels removed)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        following = text[match.end() :].lstrip()[:1]
        word = match.group()
        if following == "(" or word in _KEYWORDS:
            continue
        names.add(word)
    return names
