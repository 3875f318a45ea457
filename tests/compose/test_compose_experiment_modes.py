"""The compose stack can never run an experiment-only mode: neither the files nor the
resolved configuration set ``EXPERIMENT_*`` or ``EXPERIMENTS_ALLOWED`` in any service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest.stack import COMPOSE_FILE, DATASTORES_FILE, ROOT, ComposeStack
from services.settings import EXPERIMENT_MODES, EXPERIMENTS_ALLOWED
from tests.compose.test_compose_config import _compose_cli_available
from tests.support import require

FORBIDDEN = re.compile(r"EXPERIMENTS?_[A-Z_]+")


def _compose_sources() -> list[str]:
    files = [COMPOSE_FILE, DATASTORES_FILE, *sorted((ROOT / "docker").rglob("*"))]
    return [str(f) for f in files if f.is_file()]


@pytest.mark.parametrize("path", _compose_sources())
def test_no_compose_source_names_an_experiment_mode(path: str) -> None:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    assert not FORBIDDEN.findall(text), f"{path} mentions {FORBIDDEN.findall(text)}"


def test_no_resolved_service_sets_an_experiment_mode() -> None:
    require(_compose_cli_available(), "the docker CLI with the Compose v2 plugin is not installed")
    services = ComposeStack(project="experimentsconfigtest").config_json()["services"]
    names = {EXPERIMENTS_ALLOWED, *(mode.upper() for mode in EXPERIMENT_MODES)}
    assert services
    for name, service in services.items():
        environment = service.get("environment") or {}
        assert not names & set(environment), f"service {name} sets {names & set(environment)}"
