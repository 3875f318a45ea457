"""``make compose-up`` gives the api an admin token: the configured one, else the one kept
in ``.run/admin-token``; compose reads it from an env file only root may read."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from loadtest import stack as compose
from tests.compose.test_compose_config import _compose_cli_available
from tests.support import require


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``.run`` moved to ``tmp_path``, and no ADMIN_TOKEN in the environment."""
    monkeypatch.setattr(compose, "RUN_DIR", tmp_path / "run")
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    return tmp_path / "run"


def test_without_a_configured_token_one_is_made_and_kept(run_dir: Path) -> None:
    stack = compose.ComposeStack(project="contracttokentest")
    try:
        token = stack.ensure_admin_token()
        assert token.where == str(run_dir / "admin-token")
        assert token.value == (run_dir / "admin-token").read_text().strip()
        assert stack.ensure_admin_token() == token
        env_file = Path(stack._env_file)
        assert f"ADMIN_TOKEN={token.value}\n" in env_file.read_text()
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    finally:
        Path(stack._env_file).unlink(missing_ok=True)


def test_a_configured_token_is_passed_on(run_dir: Path) -> None:
    stack = compose.ComposeStack(project="contracttokentest", env={"ADMIN_TOKEN": "given"})
    try:
        assert stack.ensure_admin_token().value == "given"
        assert not run_dir.exists()
    finally:
        Path(stack._env_file).unlink(missing_ok=True)


def test_the_api_service_reads_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    require(_compose_cli_available(), "the docker CLI with the Compose v2 plugin is not installed")
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-environment")
    services = compose.ComposeStack(project="contracttokentest").config_json()["services"]
    assert services["api"]["environment"]["ADMIN_TOKEN"] == "from-the-environment"
    assert "ADMIN_TOKEN" not in services["worker"]["environment"]
