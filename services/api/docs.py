"""``/docs``: Swagger UI served from this api, so that it renders without internet.

FastAPI's own ``/docs`` page loads Swagger UI from a public CDN (a blank page offline);
this is FastAPI's self-hosting recipe instead, with Swagger UI 5 (OpenAPI 3.1, which
FastAPI writes) vendored under ``static/vendor/swagger-ui`` (see its README). ReDoc,
also CDN-only, is switched off in :func:`services.api.main.create_app`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from services.api.routers.dashboard import STATIC_DIR

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/static"
SWAGGER_UI_DIR = STATIC_DIR / "vendor" / "swagger-ui"
# No call to the public validator.swagger.io either: offline it would only fail.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` and its assets at ``/docs/static``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """The Swagger UI page for this app's OpenAPI schema, every asset local."""
        root = request.scope.get("root_path", "").rstrip("/")
        assets = f"{root}{ASSETS_PATH}"
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
