"""The small programs the images run and build with, tested on the host.

``docker/python/requirements.py`` (what the app image installs, which pins apply),
``docker/python/healthcheck.py`` (the Python services' healthchecks) and the driver's
reading of a container's cgroup swap limit.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from pathlib import Path
from types import ModuleType

import pytest

from loadtest.stack import ROOT, SwapCheck


def _load(name: str) -> ModuleType:
    path = ROOT / "docker" / "python" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docker_python_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = _load("requirements")
healthcheck = _load("healthcheck")


def test_image_requirements_are_the_services_extra_and_locust() -> None:
    chosen = requirements.image_requirements(ROOT / "pyproject.toml")
    names = {requirements.requirement_name(req) for req in chosen}
    assert {"fastapi", "celery", "redis", "psycopg", "locust"} <= names
    # Host-only tools stay out of the image.
    assert not names & {"matplotlib", "python-on-whales", "rich", "pytest", "mypy"}


def test_lock_pins_keep_only_name_equals_version(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# pinned\n"
        "celery==5.7.0\n"
        "uvicorn[standard]==0.54.0  # extra kept\n"
        "-e file:///work/main\n"
        "flashsale-gmp @ file:///work/main\n"
        "\n"
    )
    assert requirements.lock_pins(lock) == ["celery==5.7.0", "uvicorn[standard]==0.54.0"]


def test_requirement_name_normalises() -> None:
    assert requirements.requirement_name("Redis[hiredis]>=5.0") == "redis"
    assert requirements.requirement_name("pydantic_settings>=2.4") == "pydantic-settings"
    with pytest.raises(ValueError, match="not a requirement"):
        requirements.requirement_name(">=1.0")


def test_fresh_heartbeat_is_healthy_and_stale_one_is_not(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    assert healthcheck.check_fresh(str(beat), "30") is not None  # never written
    beat.touch()
    assert healthcheck.check_fresh(str(beat), "30") is None
    old = time.time() - 120
    os.utime(beat, (old, old))
    assert "last beat" in healthcheck.check_fresh(str(beat), "30")


def test_connected_sees_an_established_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert healthcheck.check_connected(str(port)) is not None  # listening is not connected
        with socket.create_connection(("127.0.0.1", port)), server.accept()[0]:
            assert healthcheck.check_connected(str(port)) is None


def test_http_check_reports_an_unreachable_url() -> None:
    assert healthcheck.check_http("http://127.0.0.1:9/") is not None


def test_healthcheck_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["import", "json"]) == 0
    assert healthcheck.main(["import", "no_such_module_here"]) == 1
    assert "unhealthy" in capsys.readouterr().err
    assert healthcheck.main(["bogus"]) == 2


@pytest.mark.parametrize(
    ("raw", "forbidden"),
    [
        ("v2 0", True),
        ("v2 max", False),
        ("v1 536870912 536870912", True),
        ("v1 536870912 1073741824", False),
        ("v1 9223372036854771712 9223372036854771712", False),  # both unlimited
    ],
)
def test_swap_check_reads_cgroup_v1_and_v2(raw: str, forbidden: bool) -> None:
    assert SwapCheck("svc", raw).forbidden is forbidden
