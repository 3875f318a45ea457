"""Admin access: ``PUT /items/*`` and ``POST /admin/*`` need ``Authorization: Bearer <token>``.

The token is the ``ADMIN_TOKEN`` setting. Without it the admin routes are closed (every
request gets 401): an operator who forgot to configure one must not get an open sale.
Reads, orders, health, metrics and the dashboard never ask for it.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.admin_token import configured
from services.api.dependencies import context_of
from services.api.errors import ApiError
from services.api.schemas import ErrorBody

# auto_error=False: a missing header must get the project's 401 body, not FastAPI's.
_bearer = HTTPBearer(
    scheme_name="AdminToken",
    description="the ADMIN_TOKEN setting (make up / make compose-up keep it in .run/admin-token)",
    auto_error=False,
)

UNAUTHORIZED_RESPONSE: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "no bearer token, or not the admin token"}
}
"""The response every admin route declares."""


def token_matches(presented: str, expected: str | None) -> bool:
    """Whether ``presented`` is the ``expected`` token (never when none is configured).

    Constant time whatever the difference; compared as UTF-8 bytes because
    ``compare_digest`` refuses non-ASCII ``str`` and a header may carry any character.
    """
    return expected is not None and secrets.compare_digest(presented.encode(), expected.encode())


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let the request through only with the admin bearer token; 401 ``unauthorized`` else."""
    expected = configured(context_of(request).settings.admin_token)
    if credentials is None or not token_matches(credentials.credentials, expected):
        raise ApiError(
            401,
            "unauthorized",
            "admin routes need Authorization: Bearer <ADMIN_TOKEN>",
            {"WWW-Authenticate": "Bearer"},
        )


AdminOnly = Depends(require_admin)
"""``dependencies=[AdminOnly]`` on an admin route or router."""
