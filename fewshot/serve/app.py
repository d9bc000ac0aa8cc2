"""The server: the API routers under ``/api/v1`` (:mod:`.routes`), the web page (``/``) and the API docs
(``/docs``, offline), behind the :class:`~.guard.Guard`; errors are answered as :mod:`.responses` says."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from .context import Server
from .engine import Engine
from .guard import Guard, is_loopback
from .responses import install_error_handlers
from .routes import ROUTERS
from .uploads import Limits

STATIC = Path(__file__).parent / "static"
PAGE_SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: "
                                            "mediastream:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def create_app(engine: Engine, limits: Limits = Limits(), token: str | None = None, loopback_only: bool = True
               ) -> Guard:
    """The server around ``engine``; ``token``: required on every ``/api`` request when given;
    ``loopback_only``: refuse requests whose Host is not a loopback name (DNS-rebinding defence)."""
    app = FastAPI(title="fewshot serve", version="1", docs_url=None, redoc_url=None,
                  description="Few-shot image classification: name classes, upload a few images to each, estimate "
                              "accuracy, predict, export. Errors are JSON {\"error\": \"...\"} with a 4xx status.")
    app.state.server = Server(engine, limits, token)
    install_error_handlers(app)
    api = APIRouter(prefix="/api/v1")
    for router in ROUTERS:
        api.include_router(router)
    app.include_router(api)
    serve_schema_3_0(app)
    add_page_and_docs(app)
    remove_stale_work(engine.store.root / "tmp")
    engine.tmp.mkdir(parents=True, exist_ok=True)
    guarded = Guard(app, limits, token, loopback_only)
    guarded.fastapi = app
    return guarded


def remove_stale_work(tmp: Path) -> None:
    """Remove the work folders (``tmp/<pid>``) of servers that are no longer running, and anything else left there
    for a day: exports a killed server left behind. A running server's folder, with its in-flight exports, stays."""
    if not tmp.is_dir():
        return
    for entry in tmp.iterdir():
        if entry.name.isdigit():
            try:
                os.kill(int(entry.name), 0)
                continue  # alive (or not ours to signal): its exports stay
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif time.time() - entry.stat().st_mtime < 86400:
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def serve_schema_3_0(app: FastAPI) -> None:
    """``/openapi.json`` in the OpenAPI 3.0 dialect (:func:`openapi_3_0`), made once."""
    full_schema = app.openapi

    def schema_3_0() -> dict:
        if not getattr(app, "schema_3_0", None):
            app.schema_3_0 = openapi_3_0(full_schema()) | {"openapi": "3.0.3"}
        return app.schema_3_0

    app.openapi = schema_3_0


def add_page_and_docs(app: FastAPI) -> None:
    """``/`` (the page, with its security headers), ``/static``, ``/docs`` and its offline assets."""
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_SECURITY)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        if swagger_assets() is None:
            return HTMLResponse("<p>The interactive docs need the swagger-ui-bundle package (pip install "
                                "'fewshot[serve]'); the API schema is at <a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="fewshot serve API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if swagger_assets() is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_assets()), name="docs-assets")


def openapi_3_0(node):
    """FastAPI's OpenAPI 3.1 schema in the 3.0 dialect that the bundled Swagger UI (4.x) reads: ``anyOf`` with a
    ``null`` member becomes ``nullable``, numeric ``exclusiveMinimum`` / ``exclusiveMaximum`` become a bound with
    a boolean, ``contentMediaType`` (file uploads) becomes ``format: binary``."""
    if isinstance(node, list):
        return [openapi_3_0(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: openapi_3_0(value) for key, value in node.items()}
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        node.pop("anyOf")
        node.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        node["nullable"] = True
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(exclusive), (int, float)) and not isinstance(node.get(exclusive), bool):
            node[bound], node[exclusive] = node[exclusive], True
    if "contentMediaType" in node:
        node.pop("contentMediaType")
        node["format"] = "binary"
    return node


def swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle package, so /docs works offline."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


__all__ = ["create_app", "is_loopback", "openapi_3_0"]
