"""Static checks of the monitoring configuration: PromQL parses, names exist, uids match.

PromQL is parsed by Debian's ``promtool`` (every panel expression becomes a recording
rule), never by a regex; the metric names each expression selects are checked against a
real exposition of the project's metrics (``services.metrics`` plus the G-M-P collector
over a real gmpworker Runtime).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY as PROJECT_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest
from promql_helpers import load_dashboards, metric_names, panel_queries

import gmpworker
import services.metrics  # noqa: F401  (registers every service metric on the default registry)
from services.monitoring import dashboards
from services.monitoring.scrape import Scrape
from services.worker.runtime_metrics import register_runtime
from tests.support import require

MONITORING = Path(dashboards.__file__).parent
DATASOURCES = MONITORING / "grafana/provisioning/datasources"
PROVIDERS = MONITORING / "grafana/provisioning/dashboards"
PROMETHEUS_CONFIGS = sorted((MONITORING / "prometheus").glob("*.yml"))
# Third-party exporters' names are checked against real exporters in the live test.
EXPORTER_DASHBOARDS = {"datastores.json"}


def _promtool() -> str:
    path = shutil.which("promtool")
    require(path, "promtool not found (Debian package `prometheus`)")
    assert path is not None
    return path


def test_dashboard_files_are_what_the_generator_writes() -> None:
    """The committed JSON matches services/monitoring/dashboards.py (no hand drift)."""
    for name, build in dashboards.BOARDS.items():
        on_disk = (dashboards.DASHBOARD_DIR / name).read_text()
        assert on_disk == dashboards.render(build()), (
            f"{name} is stale: run python -m services.monitoring.dashboards"
        )


def test_required_dashboards_and_panels_exist() -> None:
    """The two dashboards the issue names exist with their key panels."""
    boards = load_dashboards()
    titles = {b["title"]: {p["title"] for p in b["panels"]} for b in boards.values()}
    overview = titles["Flash sale overview"]
    for panel in (
        "Requests by route",
        "Latency percentiles",
        "Cache hit ratio",
        "Orders by outcome",
        "Queue depth and pending orders",
        "Accept-to-persist lag",
        "Stock left and reconciler",
    ):
        assert panel in overview
    gmp = titles["G-M-P runtime"]
    for panel in (
        "Gs by state",
        "Run queue per P and global",
        "Ms by state",
        "Steals, hand-offs, retakes, preemptions",
        "SCHED (as GODEBUG=schedtrace prints it)",
    ):
        assert panel in gmp
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{board['title']}: duplicate panel ids"


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    """Each expression, as a recording rule, passes ``promtool check rules``."""
    promtool = _promtool()
    queries = list(panel_queries(load_dashboards()))
    assert len(queries) > 40
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [
                    {"record": f"panel:q{i}", "expr": q.resolved} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """The parse check above can fail: a malformed expression is reported."""
    promtool = _promtool()
    path = tmp_path / "bad.rules.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [{"record": "bad:q", "expr": "sum(rate(http_requests_total[1m])"}],
                    }
                ]
            }
        )
    )
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def _project_exposition() -> Scrape:
    """A real text exposition: every service metric and the collector over a real Runtime."""
    runtime = gmpworker.Runtime(procs=2)
    registry = CollectorRegistry()
    register_runtime(runtime, registry)
    scrape = Scrape()
    scrape.add_text(generate_latest(PROJECT_REGISTRY).decode())
    scrape.add_text(generate_latest(registry).decode())
    return scrape


def test_every_metric_a_panel_uses_is_exported() -> None:
    """Names in the project's dashboards all appear in a real /metrics exposition."""
    exported = _project_exposition().exported_names()
    missing = [
        f"{name} in {q}"
        for q in panel_queries(load_dashboards())
        if q.dashboard not in EXPORTER_DASHBOARDS
        for name in metric_names(q.resolved)
        if name not in exported
    ]
    assert not missing, "\n".join(missing)


def test_metric_name_extraction_finds_names_not_functions() -> None:
    """The name check is meaningful: it finds metrics and ignores functions and labels."""
    expr = 'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{a="b"}[30s]))) / y'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_datasource_uid_is_fixed_and_used_by_every_panel() -> None:
    """One provisioned Prometheus datasource; every panel and target references its uid."""
    sources = [
        ds
        for path in DATASOURCES.glob("*.yml")
        for ds in yaml.safe_load(path.read_text())["datasources"]
    ]
    assert [ds["type"] for ds in sources] == ["prometheus"]
    (source,) = sources
    assert source["uid"] == dashboards.DATASOURCE_UID
    assert source["url"].startswith("http://")
    for name, board in load_dashboards().items():
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == source["uid"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == source["uid"], (name, panel["title"])


def test_dashboards_are_unwrapped_objects_with_unique_uids() -> None:
    """File-provisioned dashboards are the object itself, not ``{"dashboard": ...}``."""
    boards = load_dashboards()
    assert {"flash-sale-overview.json", "gmp-runtime.json"} <= set(boards)
    for name, board in boards.items():
        assert "dashboard" not in board, name
        assert board["uid"] and board["title"] and board["panels"], name
        assert "${DS_" not in str(board), f"{name} uses an unresolvable import placeholder"
    uids = [b["uid"] for b in boards.values()]
    assert len(uids) == len(set(uids))


def test_dashboard_provider_points_at_a_folder_of_files() -> None:
    """The provider is a file provider with a path, as Grafana's provisioning expects."""
    providers = [
        p for path in PROVIDERS.glob("*.yml") for p in yaml.safe_load(path.read_text())["providers"]
    ]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        assert provider["options"]["path"].startswith("/")


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_prometheus_configs_are_valid(config: Path) -> None:
    """``promtool check config`` accepts both scrape configurations."""
    promtool = _promtool()
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_configs_scrape_every_service() -> None:
    """Native targets on 127.0.0.1, compose targets by service name, same jobs for both."""
    native, compose = (
        yaml.safe_load((MONITORING / "prometheus" / name).read_text())
        for name in ("prometheus.yml", "prometheus.compose.yml")
    )

    def targets(config: dict[str, object]) -> dict[str, list[str]]:
        return {
            job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]  # type: ignore[union-attr]
        }

    assert targets(native) == {
        "api": ["127.0.0.1:8000"],
        "worker": ["127.0.0.1:9101"],
        "reconciler": ["127.0.0.1:9102"],
    }
    in_compose = targets(compose)
    assert in_compose["api"] == ["api:8000"]
    assert in_compose["worker"] == ["worker:9101"]
    assert in_compose["reconciler"] == ["reconciler:9102"]
    assert {"redis", "postgres", "rabbitmq"} <= set(in_compose)
