"""The HTTP API (``/api/v1``), the web page (``/``) and the API docs (``/docs``, offline).

Every error is JSON ``{"error": "one line"}`` with a 4xx status: validation errors, unknown routes, our
:class:`~fewshot.errors.FewshotError` family (mapped by :data:`STATUS`), ids no row can have (404, as any
unknown id), oversized bodies (413 before they are read, or once a body sent without a length passes the
cap), missing tokens (401), cross-site requests (403). Anything unexpected is logged with its
traceback on the server and answered with a 500 whose body says only that (never the traceback).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import re
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CapabilityError, ExportError, FewshotError, InvalidImageError, NotFittedError, SupportSetError
from .engine import Engine
from .jobs import Busy, Cancelled
from .store import Conflict, LimitExceeded, NewImage, NotFound
from .uploads import (BadImage, BadName, CheckedImage, Limits, NotAnImage, TooLarge, check_image, check_name,
                      display_name, size_text, thumbnail_png)

log = logging.getLogger("fewshot.serve")
STATIC = Path(__file__).parent / "static"
STATUS: dict[type, int] = {NotFound: 404, Conflict: 409, SupportSetError: 409, NotFittedError: 409,
                           LimitExceeded: 413, TooLarge: 413, NotAnImage: 415, BadImage: 400, BadName: 400,
                           InvalidImageError: 400, ExportError: 400, CapabilityError: 400, Busy: 429, FewshotError: 400}
MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_REPEATS = 200  # an estimate's splits: more narrow nothing (the interval counts images, not splits)
Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description="an id from this API")]  # out of range: 404, as unknown
EXPORT_SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "onnx-int8": ".int8.onnx"}
PAGE_SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: "
                                            "mediastream:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of everything: request-body cap, token check and cross-site refusal, decided
    from the headers before a byte of the body is read; a body sent without a length (chunked) is counted as
    it arrives and cut off at the cap."""

    def __init__(self, app, limits: Limits, token: str | None, loopback_only: bool):
        self.app, self.limits, self.token, self.loopback_only = app, limits, token, loopback_only
        self.inflight = 0  # bytes of the request bodies being received (the event loop's thread only)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        length = headers.get("content-length", "")
        reserved = int(length) if length.isdigit() else (self.limits.request_cap if scope["method"] in
                                                         ("POST", "PUT", "PATCH") else 0)
        if reserved and self.inflight and self.inflight + reserved > self.limits.max_inflight_bytes:
            busy = error(429, f"the server is receiving {size_text(self.inflight)} of other uploads (limit "
                              f"{size_text(self.limits.max_inflight_bytes)}): send this again in a few seconds",
                         {"Retry-After": "5"})
            return await busy(scope, receive, send)
        self.inflight += reserved
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.inflight -= reserved

    async def _guarded(self, scope, receive, send):
        cap, seen = self.limits.request_cap, 0
        started = too_large = False

        async def counted_receive():
            """The body as it comes; past the cap, the client "disconnects" (a raised exception would reach the
            app's body parsing, which answers any failure with a 400)."""
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            """The app's answer, except when the body was cut off before it started: the 413 replaces it."""
            nonlocal started
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not too_large:  # the app failing on the body we cut off is not an error of its own
                raise
        if too_large and not started:
            await self._too_large()(scope, receive, send)

    def _too_large(self) -> JSONResponse:
        return error(413, f"the request is larger than {size_text(self.limits.request_cap)}: send fewer or "
                          "smaller files per request")

    def _refusal(self, scope, headers: dict) -> Response | None:
        path = scope["path"]
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.request_cap:
            return self._too_large()
        host = headers.get("host", "")
        if self.loopback_only:
            # DNS rebinding: a web page on another name that resolves to 127.0.0.1 must not reach the API
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if not is_loopback(name):
                return error(403, f"host '{host}' refused: this server answers only to 127.0.0.1 / localhost")
        origin = headers.get("origin")
        # "null" is a foreign origin too: sandboxed frames, file:// pages and some redirects send it; the page
        # this server serves sends its own origin (fetch from the same origin never sends "null")
        if origin and origin.split("://", 1)[-1] != host:
            return error(403, f"cross-site request from {origin} refused: use the page this server serves")
        if self.token and path.startswith("/api/"):
            given = headers.get("authorization", "")
            given = given[7:].strip() if given.lower().startswith("bearer ") else headers.get("x-fewshot-token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return error(401, "missing or wrong access token: send 'Authorization: Bearer TOKEN' (the token the "
                                  "server was started with; a token in the URL is not accepted, since URLs land "
                                  "in browser history and logs)", {"WWW-Authenticate": "Bearer"})
        return None


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1 to 100 characters, any Unicode except control characters")


class EstimateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repeats: int = Field(50, ge=1, le=MAX_REPEATS, description="random splits")
    holdout: float = Field(0.2, gt=0, lt=1, description="fraction of each class held out per split")
    seed: int = Field(0, ge=0, description="seed of the splits")


def create_app(engine: Engine, limits: Limits = Limits(), token: str | None = None, loopback_only: bool = True
               ) -> Guard:
    """The server around ``engine``; ``token``: required on every ``/api`` request when given;
    ``loopback_only``: refuse requests whose Host is not a loopback name (DNS-rebinding defence)."""
    app = FastAPI(title="fewshot serve", version="1", docs_url=None, redoc_url=None,
                  description="Few-shot image classification: name classes, upload a few images to each, estimate "
                              "accuracy, predict, export. Errors are JSON {\"error\": \"...\"} with a 4xx status.")
    store = engine.store
    api = APIRouter(prefix="/api/v1")
    decoding = threading.BoundedSemaphore(limits.max_decodes)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(FewshotError)
    async def fewshot_error(request: Request, exc: FewshotError):
        status = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return error(status, str(exc), headers)

    @app.exception_handler(Cancelled)
    async def cancelled(request: Request, exc: Cancelled):  # nobody is listening any more
        return error(400, "the request was cancelled: the client went away")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = tuple(first.get("loc", ()))
        if loc[:1] == ("path",) and first.get("type") in ("greater_than_equal", "less_than_equal"):
            # an id no row can have (0, negative, past SQLite's integers) is as unknown as any other
            return error(404, f"{str(loc[-1]).removesuffix('_id')} {first.get('input')} does not exist")
        where = ".".join(str(part) for part in loc if part not in ("body", "query", "path"))
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            where, message = "", f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'a syntax error')})"
        elif first.get("type") in ("model_attributes_type", "dict_type"):
            message = "the body must be a JSON object (Content-Type: application/json), e.g. {\"name\": \"cats\"}"
        elif first.get("type") == "extra_forbidden":
            message = "unknown key"
        return error(400, f"{where}: {message}" if where else message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        elif message == "Invalid multipart data.":  # python-multipart's one word for every parsing failure
            message = ("the multipart body cannot be read: a part's header is longer than 4 KB (usually a file name "
                       "of thousands of characters: rename the file) or the body is malformed")
        return error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    # ------------------------------------------------------------------ views
    def image_view(project_id: int, image: dict) -> dict:
        base = f"/api/v1/projects/{project_id}/images/{image['id']}"
        return {"id": image["id"], "class_id": image["class_id"], "name": image["name"], "format": image["format"],
                "width": image["width"], "height": image["height"], "bytes": image["bytes"],
                "sha256": image["sha256"], "url": f"{base}/file", "thumbnail_url": f"{base}/thumbnail"}

    def project_view(project_id: int) -> dict:
        project = store.project(project_id)
        return {"id": project["id"], "name": project["name"], "revision": project["revision"],
                "classes": [{"id": c["id"], "name": c["name"], "images": [image_view(project_id, i) for i in c["images"]]}
                            for c in project["classes"]]}

    def class_view(project_id: int, class_id: int) -> dict:
        entry = store.class_info(project_id, class_id)
        return {"id": entry["id"], "name": entry["name"], "images": [image_view(project_id, i) for i in entry["images"]]}

    async def read_uploads(files: Optional[list[UploadFile]], keep=thumbnail_png) -> list[CheckedImage]:
        """Checked images from a multipart upload (every file, or an error naming the first bad one), each
        keeping ``keep(decoded image)`` rather than the decoded image (see :func:`check_image`)."""
        if not files:
            raise BadImage("no files in the request: send the images as multipart/form-data field 'files'")
        if len(files) > limits.max_files_per_request:
            raise TooLarge(f"{len(files)} files in one request; at most {limits.max_files_per_request}: split the "
                           "upload")
        raw = []
        for n, upload in enumerate(files):
            data = await upload.read(limits.max_file_bytes + 1)
            raw.append((data, display_name(upload.filename, f"image {n + 1}")))
        def check(data: bytes, name: str) -> CheckedImage:
            with decoding:  # at most limits.max_decodes images decoded at once, all requests together
                return check_image(data, name, limits, keep)

        return await run_in_threadpool(lambda: [check(data, name) for data, name in raw])

    async def until_done(request: Request, work):
        """``work(cancel)`` in a worker thread; ``cancel`` (a threading.Event) is set when the client disconnects,
        so a heavy job stops at its next pass instead of running for nobody."""
        cancel = threading.Event()
        task = asyncio.ensure_future(run_in_threadpool(work, cancel))
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await request.is_disconnected():
                cancel.set()
        return task.result()

    def embed_soon(project_id: int, image_ids: list[int]) -> None:
        """Embed just-stored images now if possible; they are committed already, so a failure here must not
        fail the upload: it is logged, and the next fit embeds them."""
        try:
            engine.embed_new(project_id, image_ids)
        except Exception:
            log.exception("embedding %d new image(s) of project %s failed; the next prediction embeds them",
                          len(image_ids), project_id)

    # ------------------------------------------------------------------ info and projects
    @api.get("/info", summary="The model, its capabilities and the upload limits")
    def info() -> dict:
        return engine.info() | {"limits": limits.to_json(), "token_required": bool(token),
                                "schema_version": store.schema_version()}

    @api.get("/projects", summary="List projects")
    def list_projects() -> dict:
        return {"projects": [{"id": p["id"], "name": p["name"], "classes": p["classes"], "images": p["images"]}
                             for p in store.list_projects()]}

    @api.post("/projects", status_code=201, summary="Create a project")
    def create_project(body: NameBody) -> dict:
        return project_view(store.create_project(check_name(body.name, "project")))

    @api.get("/projects/{project_id}", summary="A project with its classes and images")
    def get_project(project_id: Id) -> dict:
        return project_view(project_id)

    @api.patch("/projects/{project_id}", summary="Rename a project")
    def rename_project(project_id: Id, body: NameBody) -> dict:
        store.rename_project(project_id, check_name(body.name, "project"))
        return project_view(project_id)

    @api.delete("/projects/{project_id}", status_code=204, summary="Delete a project, its classes and images")
    def delete_project(project_id: Id) -> Response:
        store.delete_project(project_id)
        engine.forget(project_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ classes
    @api.post("/projects/{project_id}/classes", status_code=201, summary="Create a class")
    def create_class(project_id: Id, body: NameBody) -> dict:
        return class_view(project_id, store.create_class(project_id, check_name(body.name, "class")))

    @api.get("/projects/{project_id}/classes/{class_id}", summary="A class with its images")
    def get_class(project_id: Id, class_id: Id) -> dict:
        return class_view(project_id, class_id)

    @api.patch("/projects/{project_id}/classes/{class_id}", summary="Rename a class")
    def rename_class(project_id: Id, class_id: Id, body: NameBody) -> dict:
        store.rename_class(project_id, class_id, check_name(body.name, "class"))
        return class_view(project_id, class_id)

    @api.delete("/projects/{project_id}/classes/{class_id}", status_code=204, summary="Delete a class and its images")
    def delete_class(project_id: Id, class_id: Id) -> Response:
        store.delete_class(project_id, class_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ images
    @api.post("/projects/{project_id}/classes/{class_id}/images", status_code=201,
              summary="Upload one or many images to a class (multipart field 'files')")
    async def upload_images(project_id: Id, class_id: Id,
                            files: Optional[list[UploadFile]] = File(None, description="image files")) -> dict:
        checked = await read_uploads(files)

        def store_them():
            new = [NewImage(c.data, c.sha256, c.name, c.format, c.width, c.height, c.kept) for c in checked]
            added, skipped = store.add_images(project_id, class_id, new, limits.max_images_per_project)
            embed_soon(project_id, added)
            entry = store.class_info(project_id, class_id)
            return {"added": [image_view(project_id, i) for i in entry["images"] if i["id"] in set(added)],
                    "skipped": skipped}

        return await run_in_threadpool(store_them)

    @api.get("/projects/{project_id}/classes/{class_id}/images", summary="The images of a class")
    def list_images(project_id: Id, class_id: Id) -> dict:
        return {"images": class_view(project_id, class_id)["images"]}

    @api.delete("/projects/{project_id}/images/{image_id}", status_code=204, summary="Delete an image")
    def delete_image(project_id: Id, image_id: Id) -> Response:
        store.delete_image(project_id, image_id)
        return Response(status_code=204)

    @api.get("/projects/{project_id}/images/{image_id}/file", summary="The uploaded file")
    def image_file(project_id: Id, image_id: Id) -> Response:
        from .uploads import ALLOWED_FORMATS

        image = store.image(project_id, image_id)
        return FileResponse(store.image_path(image["sha256"]), media_type=ALLOWED_FORMATS[image["format"]],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})

    @api.get("/projects/{project_id}/images/{image_id}/thumbnail", summary="A PNG thumbnail (160 px)")
    def image_thumbnail(project_id: Id, image_id: Id) -> Response:
        image = store.image(project_id, image_id)
        return FileResponse(store.thumbnail_path(image["sha256"]), media_type="image/png",
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"})

    # ------------------------------------------------------------------ using the classifier
    @api.post("/projects/{project_id}/predict",
              summary="Classify images (multipart field 'files'); explain=true adds a Grad-CAM heatmap PNG")
    async def predict(request: Request, project_id: Id,
                      explain: bool = Query(False, description="add a Grad-CAM heatmap"),
                      files: Optional[list[UploadFile]] = File(None, description="image files")) -> dict:
        if explain:
            engine.require("explain")
        checked = await read_uploads(files, keep=engine.model_input)
        results = await until_done(request, lambda cancel: engine.predict(project_id, [c.kept for c in checked],
                                                                          explain, cancel))
        predictions = []
        for item, upload in zip(results, checked):
            entry = {"name": upload.name, "predicted": item["predicted"], "probabilities": item["probabilities"]}
            if "heatmap" in item:
                entry["heatmap"] = "data:image/png;base64," + base64.b64encode(item["heatmap"]).decode()
            predictions.append(entry)
        return {"predictions": predictions}

    @api.post("/projects/{project_id}/estimate",
              summary="Estimated accuracy on new images: interval, per-class scores, confusion matrix")
    async def estimate(request: Request, project_id: Id, body: Optional[EstimateBody] = None) -> dict:
        body = body or EstimateBody()
        result = await until_done(request, lambda cancel: engine.estimate(project_id, body.repeats, body.holdout,
                                                                          body.seed, cancel))
        return result.to_json() | {"summary": result.summary()}

    @api.get("/projects/{project_id}/export", summary="Download the classifier (TorchScript, ONNX or INT8 ONNX)")
    async def export(request: Request, project_id: Id,
                     format: Literal["torchscript", "onnx", "onnx-int8"] = Query(  # noqa: A002
                         "onnx", description="torchscript, onnx or onnx-int8")) -> Response:
        engine.require("export")
        if format not in engine.info()["export_formats"]:
            raise ExportError(f"this server cannot export {format}: it lacks the onnx extra (pip install "
                              "'fewshot[onnx]')")
        project = store.project(project_id)
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=store.root / "tmp"))
        target = folder / f"model{EXPORT_SUFFIX[format]}"
        try:
            await until_done(request, lambda cancel: engine.export(project_id, target, format, cancel))
        except BaseException:
            _remove_tree(folder)
            raise
        filename = download_name(project["name"], EXPORT_SUFFIX[format])
        return FileResponse(target, media_type="application/octet-stream", filename=filename,
                            background=BackgroundTask(_remove_tree, folder))

    app.include_router(api)
    full_schema = app.openapi

    def schema_3_0() -> dict:
        if not getattr(app, "schema_3_0", None):
            app.schema_3_0 = openapi_3_0(full_schema()) | {"openapi": "3.0.3"}
        return app.schema_3_0

    app.openapi = schema_3_0

    # ------------------------------------------------------------------ the page and the docs
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
    _remove_tree(store.root / "tmp")  # exports a killed server left behind
    (store.root / "tmp").mkdir(exist_ok=True)
    guarded = Guard(app, limits, token, loopback_only)
    guarded.fastapi = app
    return guarded


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


def download_name(name: str, suffix: str) -> str:
    """A file name for a download: the project's name in ASCII letters, digits, '-' and '_' (Starlette adds
    the RFC 5987 form for the header)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_name).strip("-")[:60]
    return f"{slug or 'classifier'}{suffix}"


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


