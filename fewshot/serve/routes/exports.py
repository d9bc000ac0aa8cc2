"""``/projects/{p}/export``: the classifier as a download (ONNX by default, INT8 ONNX, TorchScript)."""

from __future__ import annotations

import re
import shutil
import tempfile
import unicodedata
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ...errors import ExportError
from ..context import Id, Server, server, until_done

router = APIRouter()
EXPORT_SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "onnx-int8": ".int8.onnx"}


@router.get("/projects/{project_id}/export", summary="Download the classifier (TorchScript, ONNX or INT8 ONNX)")
async def export(request: Request, project_id: Id,
                 format: Literal["torchscript", "onnx", "onnx-int8"] = Query(  # noqa: A002
                     "onnx", description="torchscript, onnx or onnx-int8"),
                 srv: Server = Depends(server)) -> Response:
    engine, store = srv.engine, srv.store
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
        remove_tree(folder)
        raise
    filename = download_name(project["name"], EXPORT_SUFFIX[format])
    return FileResponse(target, media_type="application/octet-stream", filename=filename,
                        background=BackgroundTask(remove_tree, folder))


def download_name(name: str, suffix: str) -> str:
    """A file name for a download: the project's name in ASCII letters, digits, '-' and '_' (Starlette adds
    the RFC 5987 form for the header)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_name).strip("-")[:60]
    return f"{slug or 'classifier'}{suffix}"


def remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
