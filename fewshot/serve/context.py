"""What every route shares: the :class:`Server` (engine, store, limits) as a FastAPI dependency, the request
bodies and id type, the JSON views of projects, classes and images, upload reading, and running a job so
that it stops when its client goes away."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated, Callable, Optional

from fastapi import Path as PathParam
from fastapi import Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..errors import FewshotError
from ..inference.estimate import DEFAULT_HOLDOUT
from .engine import Engine
from .store import Store
from .uploads import BadImage, CheckedImage, Limits, TooLarge, check_image, display_name, thumbnail_png

log = logging.getLogger("fewshot.serve")
MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_REPEATS = 200  # an estimate's splits: more narrow nothing (the interval counts images, not splits)
Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description="an id from this API")]  # out of range: 404, as unknown


class NameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1 to 100 characters, any Unicode except control characters")


class AdaptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapt: str = Field(description="'none' (the frozen model), 'top' (adapt the backbone's top to the project's "
                                   "images) or 'auto' (adapt only when held-out images show a gain)")


class EstimateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repeats: int = Field(50, ge=1, le=MAX_REPEATS, description="random splits")
    holdout: float = Field(DEFAULT_HOLDOUT, gt=0, lt=1, description="fraction of each class held out per split "
                                                                    "(at least one image)")
    seed: int = Field(0, ge=0, description="seed of the splits")


@dataclass
class Server:
    """The state the routes use, kept on ``app.state.server``."""

    engine: Engine
    limits: Limits
    token: str | None = None
    decoding: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.decoding = threading.BoundedSemaphore(self.limits.max_decodes)  # images decoded at once

    @property
    def store(self) -> Store:
        return self.engine.store


def server(request: Request) -> Server:
    """The FastAPI dependency that gives a route the :class:`Server`."""
    return request.app.state.server


def image_view(project_id: int, image: dict) -> dict:
    base = f"/api/v1/projects/{project_id}/images/{image['id']}"
    return {"id": image["id"], "class_id": image["class_id"], "name": image["name"], "format": image["format"],
            "width": image["width"], "height": image["height"], "bytes": image["bytes"],
            "sha256": image["sha256"], "url": f"{base}/file", "thumbnail_url": f"{base}/thumbnail"}


def project_view(store: Store, project_id: int) -> dict:
    project = store.project(project_id)
    return {"id": project["id"], "name": project["name"], "revision": project["revision"],
            "adapt": project.get("adapt", "none"),
            "classes": [{"id": c["id"], "name": c["name"], "images": [image_view(project_id, i) for i in c["images"]]}
                        for c in project["classes"]]}


def class_view(store: Store, project_id: int, class_id: int) -> dict:
    entry = store.class_info(project_id, class_id)
    return {"id": entry["id"], "name": entry["name"], "images": [image_view(project_id, i) for i in entry["images"]]}


async def read_uploads(srv: Server, files: Optional[list[UploadFile]], keep=thumbnail_png) -> list[CheckedImage]:
    """Checked images from a multipart upload (every file, or an error naming the first bad one), each
    keeping ``keep(decoded image)`` rather than the decoded image (see :func:`check_image`)."""
    limits = srv.limits
    if not files:
        raise BadImage("no files in the request: send the images as multipart/form-data field 'files'")
    if len(files) > limits.max_files_per_request:
        raise TooLarge(f"{len(files)} files in one request; at most {limits.max_files_per_request}: split the "
                       "upload")
    raw = []
    for n, upload in enumerate(files):
        data = await upload.read(limits.max_file_bytes + 1)
        raw.append((data, display_name(upload.filename, f"image {n + 1}")))

    def check(data: bytes, name: str) -> CheckedImage | FewshotError:
        with srv.decoding:  # at most limits.max_decodes images decoded at once, all requests together
            try:
                return check_image(data, name, limits, keep)
            except FewshotError as exc:
                return exc

    found = await run_in_threadpool(lambda: [check(data, name) for data, name in raw])
    refused = [item for item in found if isinstance(item, FewshotError)]
    if refused:  # one error for the request, of the first refusal's kind (its HTTP status), naming every one
        kept = len(found) - len(refused)
        total = f"{len(refused)} of {len(found)} files refused, nothing was stored" if len(found) > 1 else ""
        reasons = "; ".join(str(exc) for exc in refused)
        again = f": remove {'them' if len(refused) > 1 else 'it'} and upload the other {kept} again" if kept else ""
        raise type(refused[0])(f"{total}{' (' if total else ''}{reasons}{')' if total else ''}{again}")
    return found


async def until_done(request: Request, work: Callable[[threading.Event], object]):
    """``work(cancel)`` in a worker thread; ``cancel`` (a threading.Event) is set when the client disconnects,
    so a heavy job stops at its next pass instead of running for nobody."""
    cancel = threading.Event()
    task = asyncio.ensure_future(run_in_threadpool(work, cancel))
    while not task.done():
        await asyncio.wait({task}, timeout=0.25)
        if not task.done() and await request.is_disconnected():
            cancel.set()
    return task.result()


def embed_soon(engine: Engine, project_id: int, image_ids: list[int]) -> None:
    """Embed just-stored images now if possible; they are committed already, so a failure here must not
    fail the upload: it is logged, and the next fit embeds them."""
    try:
        engine.embed_new(project_id, image_ids)
    except Exception:
        log.exception("embedding %d new image(s) of project %s failed; the next prediction embeds them",
                      len(image_ids), project_id)
