"""Admin access: the admin routes need the bearer token, everything else stays public."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from apitest_support import ADMIN, ADMIN_TOKEN, Api, running_api
from pydantic import SecretStr

from services.admin_token import AdminToken, bearer_header, for_launcher, read_or_create
from services.api.auth import token_matches
from services.settings import Settings

pytestmark = pytest.mark.anyio

ADMIN_CALLS = [
    ("PUT", "/items/2", {"price_cents": 0}),
    ("POST", "/admin/warmup", {"reset": True}),
]
WRONG_CREDENTIALS: list[dict[str, str | bytes]] = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer not-the-token"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": "Bearer tökén".encode()},  # headers are bytes: any may come
]


async def test_admin_routes_refuse_a_missing_or_wrong_token(api: Api) -> None:
    await api.ctx.store.set_stock(2, 7)
    for method, path, body in ADMIN_CALLS:
        for headers in WRONG_CREDENTIALS:
            response = await api.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
    # Nothing happened: the reset would have put the stock back to the catalog's.
    assert await api.ctx.store.get_stocks([2]) == [7]


async def test_admin_routes_refuse_before_validating_the_body(api: Api) -> None:
    response = await api.client.put("/items/2", json={"price_cents": "free"})
    assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


async def test_the_right_token_gets_through(api: Api) -> None:
    warmed = await api.client.post("/admin/warmup", json={"ids": [3]}, headers=ADMIN)
    assert warmed.status_code == 200, warmed.text
    assert warmed.json()["items_cached"] == 1
    # Authorised, then answered by the route itself (this app's broker is down).
    update = await api.client.put("/items/2", json={"name": "x"}, headers=ADMIN)
    assert (update.status_code, update.json()["error"]) == (503, "broker_unavailable")


async def test_public_routes_need_no_token(api: Api) -> None:
    for path in ("/items/1", "/items?ids=1,2", "/healthz", "/readyz", "/metrics", "/dashboard"):
        response = await api.client.get(path)
        assert response.status_code == 200, path
    order = await api.client.post("/orders", json={"item_id": 1, "quantity": 1, "user_id": "u"})
    assert order.status_code != 401
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (await api.client.get(f"/orders/{unknown}")).status_code == 404


async def test_openapi_shows_the_bearer_scheme_on_admin_routes_only(api: Api) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["AdminToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    secured = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    assert secured == {("PUT", "/items/{item_id}"), ("POST", "/admin/warmup")}
    assert "401" in schema["paths"]["/admin/warmup"]["post"]["responses"]


@pytest.mark.parametrize("setting", [None, SecretStr("")])
async def test_no_configured_token_closes_the_admin_routes(
    settings: Settings, setting: SecretStr | None
) -> None:
    async for api in running_api(settings.model_copy(update={"admin_token": setting})):
        for headers in ({"Authorization": "Bearer "}, {"Authorization": "Bearer x"}, ADMIN):
            response = await api.client.post("/admin/warmup", json={}, headers=headers)
            assert response.status_code == 401


def test_token_comparison() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches("abc", None)
    assert not token_matches("", None)
    assert not token_matches("ä", "a")


def test_launcher_creates_a_private_token_once_and_keeps_it(tmp_path: Path) -> None:
    first = for_launcher(None, tmp_path / "run")
    path = tmp_path / "run" / "admin-token"
    assert first == AdminToken(path.read_text().strip(), str(path))
    assert len(first.value) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert for_launcher(SecretStr(""), tmp_path / "run") == first
    assert bearer_header(first.value) == {"Authorization": f"Bearer {first.value}"}


def test_launcher_prefers_the_configured_token(tmp_path: Path) -> None:
    token = for_launcher(SecretStr("configured"), tmp_path)
    assert token == AdminToken("configured", "the ADMIN_TOKEN setting")
    assert not (tmp_path / "admin-token").exists()


def test_an_emptied_token_file_is_an_error_not_an_open_door(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_or_create(tmp_path / "admin-token")
