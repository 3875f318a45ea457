"""Where the launchers get the admin token from, and the header its clients send.

``make up`` (:mod:`services.stack`) and ``make compose-up`` (:mod:`loadtest.stack`) must
never start an api whose admin routes nobody can use, nor one anybody can use. So when
``ADMIN_TOKEN`` is configured (environment or ``.env``) they pass it on, and otherwise they
use the token kept in ``<run dir>/admin-token``, creating it (random, mode 0600) the first
time; it survives restarts, so scripts can read it once.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

TOKEN_FILE_NAME = "admin-token"
TOKEN_BYTES = 32
"""Entropy of a created token (``secrets.token_urlsafe``: 43 URL-safe characters)."""


@dataclass(frozen=True)
class AdminToken:
    """The token and where a person finds it (a file path, or the variable's name)."""

    value: str
    where: str


def configured(token: SecretStr | None) -> str | None:
    """The token an ``admin_token`` setting holds, or None when it is unset or empty."""
    value = token.get_secret_value() if token is not None else ""
    return value or None


def read_or_create(path: Path) -> str:
    """The token in ``path``; a new random one is written there (mode 0600) when it is missing.

    ``O_EXCL`` makes two launchers starting at once agree: the loser reads the winner's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty: delete it to have a new token made") from None
        return token
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def for_launcher(setting: SecretStr | None, run_dir: Path) -> AdminToken:
    """The configured token, else the one kept in ``run_dir`` (created when missing)."""
    value = configured(setting)
    if value is not None:
        return AdminToken(value, "the ADMIN_TOKEN setting")
    path = run_dir / TOKEN_FILE_NAME
    return AdminToken(read_or_create(path), str(path))


def bearer_header(token: str) -> dict[str, str]:
    """The request header of an admin call."""
    return {"Authorization": f"Bearer {token}"}
