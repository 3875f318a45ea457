"""The compose file's invariants, read from ``docker compose config`` (no engine needed).

Every service: memory limit equal to its swap limit, a healthcheck without
``start_interval``, bounded logs, a restart policy, dependencies on health or completion;
no host port on the standard Redis/PostgreSQL/RabbitMQ ports and nothing published
beyond loopback; profiles as designed; images from debian:bookworm-slim (Grafana aside).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadtest.stack import COMPOSE_FILE, DATASTORES_FILE, ROOT, ComposeStack
from tests.support import require

DATASTORE_PORTS = {6379, 5432, 5672}
PUBLISHERS = {"api", "prometheus", "grafana", "locust-master"}
PROFILED = {"grafana": ["monitoring"], "locust-master": ["loadtest"], "locust-worker": ["loadtest"]}
ONE_SHOT = "migrate"
APP_IMAGE = "flashsale/app:local"
OK_CONDITIONS = {"service_healthy", "service_completed_successfully"}


def _compose_cli_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The resolved services of every profile."""
    require(_compose_cli_available(), "the docker CLI with the Compose v2 plugin is not installed")
    return ComposeStack(project="fsconfigtest").config_json()["services"]


def test_compose_file_validates() -> None:
    require(_compose_cli_available(), "the docker CLI with the Compose v2 plugin is not installed")
    for extra in ([], ["-f", str(DATASTORES_FILE)]):
        proc = subprocess.run(
            [
                "docker",
                "compose",
                "-f",
                str(COMPOSE_FILE),
                *extra,
                "--profile",
                "*",
                "config",
                "-q",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr


def test_the_architecture_is_all_there(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "migrate", "api", "worker", "reconciler", "redis-cache", "redis-state", "rabbitmq",
        "postgres", "prometheus", "redis-exporter", "postgres-exporter", "grafana",
        "locust-master", "locust-worker",
    }  # fmt: skip
    assert set(services) == expected


def test_memory_limit_equals_swap_limit_everywhere(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        limit, with_swap = service.get("mem_limit"), service.get("memswap_limit")
        assert limit is not None and int(limit) > 0, f"{name}: no mem_limit"
        assert with_swap == limit, f"{name}: memswap_limit {with_swap} != mem_limit {limit}"


def test_every_service_has_a_healthcheck_the_engine_accepts(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        # Docker Engine 20.10 (Debian's) refuses `up` with it.
        assert "start_interval" not in check, f"{name}: start_interval"


def test_restart_policy_and_bounded_logs(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        expected = "no" if name == ONE_SHOT else "unless-stopped"
        assert service.get("restart") == expected, f"{name}: restart {service.get('restart')}"
        logging = service.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert {"max-size", "max-file"} <= set(logging.get("options", {})), name


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert spec["condition"] in OK_CONDITIONS, f"{name} -> {dependency}"
            if dependency == ONE_SHOT:
                # Also what keeps `up --wait` from failing when migrate exits 0.
                assert spec["condition"] == "service_completed_successfully", name
    for name in ("api", "worker", "reconciler"):
        assert ONE_SHOT in services[name]["depends_on"], f"{name} must wait for migrations"


def test_only_the_front_ends_publish_and_only_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == PUBLISHERS
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            assert int(port.get("published") or 0) not in DATASTORE_PORTS, f"{name}: {port}"


def test_profiles_as_designed(services: dict[str, dict[str, Any]]) -> None:
    actual = {
        name: service["profiles"] for name, service in services.items() if "profiles" in service
    }
    assert actual == PROFILED


def test_python_services_refuse_swap_and_share_one_image(
    services: dict[str, dict[str, Any]],
) -> None:
    python_services = {name for name, s in services.items() if s.get("image") == APP_IMAGE}
    assert python_services == {
        "migrate", "api", "worker", "reconciler", "locust-master", "locust-worker"
    }  # fmt: skip
    for name in python_services:
        assert services[name]["environment"]["REQUIRE_NO_SWAP"] == "1", name


def test_api_runs_several_workers_with_metrics_on_tmpfs(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    workers = [arg for arg in api["command"] if arg.startswith("--workers=")]
    assert workers and int(workers[0].split("=")[1]) >= 2
    multiproc_dir = api["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert any(mount.split(":")[0] == multiproc_dir for mount in api["tmpfs"])


def _redis_maxmemory_bytes(conf: Path) -> int:
    match = re.search(r"^maxmemory\s+(\d+)mb\s*$", conf.read_text(), re.MULTILINE)
    assert match, f"{conf}: no maxmemory in mb"
    return int(match.group(1)) * 1024 * 1024


def test_redis_roles_fit_their_containers(services: dict[str, dict[str, Any]]) -> None:
    policies = {"redis-cache": "allkeys-lru", "redis-state": "noeviction"}
    for name, policy in policies.items():
        conf_path = next(arg for arg in services[name]["command"] if arg.endswith(".conf"))
        conf = ROOT / "docker" / "redis" / Path(conf_path).name
        assert f"maxmemory-policy {policy}" in conf.read_text(), name
        assert _redis_maxmemory_bytes(conf) < int(services[name]["mem_limit"]), name
    assert "appendonly yes" in (ROOT / "docker/redis/state.conf").read_text()
    assert any(v["target"] == "/data" for v in services["redis-state"]["volumes"])


def test_postgres_keeps_its_data_in_a_named_volume(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["postgres"]["volumes"]
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/postgresql/data" for v in volumes)
    assert "127.0.0.1" in " ".join(services["postgres"]["healthcheck"]["test"])


def _dockerfile_bases(dockerfile: Path) -> list[str]:
    """The base of each stage of ``dockerfile`` that is not an earlier stage."""
    bases, stages = [], set()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["FROM"]:
            if words[1] not in stages:
                bases.append(words[1])
            if len(words) == 4 and words[2].upper() == "AS":
                stages.add(words[3])
    return bases


def test_built_images_come_from_debian_and_grafana_is_pinned(
    services: dict[str, dict[str, Any]],
) -> None:
    builds = {s["image"]: s["build"] for s in services.values() if "build" in s}
    # Each image is built by exactly one service (so it is built once).
    assert len(builds) == sum(1 for s in services.values() if "build" in s)
    for name, service in services.items():
        if service["image"] in builds:
            build = builds[service["image"]]
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            assert set(_dockerfile_bases(dockerfile)) == {"debian:bookworm-slim"}, name
        else:
            assert name == "grafana", f"{name}: image {service['image']} is built by no service"
            repository, _, tag = service["image"].partition(":")
            assert repository == "grafana/grafana-oss" and tag not in ("", "latest")


def test_exposing_the_datastores_uses_free_loopback_ports() -> None:
    require(_compose_cli_available(), "the docker CLI with the Compose v2 plugin is not installed")
    config = ComposeStack(project="fsconfigtest", expose_datastores=True).config_json()
    for name in ("postgres", "redis-state"):
        (port,) = config["services"][name]["ports"]
        assert port["host_ip"] == "127.0.0.1" and not port.get("published"), f"{name}: {port}"
