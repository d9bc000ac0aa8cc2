"""``/projects/{p}/predict``: classify uploaded images, optionally with a Grad-CAM heatmap each."""

from __future__ import annotations

import base64
from typing import Optional

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile

from ...inference.open_set import check_unknown
from ..context import Id, Server, read_uploads, server, until_done

router = APIRouter()


@router.post("/projects/{project_id}/predict",
             summary="Classify images (multipart field 'files'); explain=true adds a Grad-CAM heatmap PNG")
async def predict(request: Request, project_id: Id, explain: bool = Query(False, description="add a Grad-CAM heatmap"),
                  unknown: Optional[str] = Query(None, description="'auto' (a threshold chosen from the project's "
                                                 "images, each class held out in turn) or a score threshold: answer "
                                                 "'unknown' for an image that looks like none of the classes"),
                  files: Optional[list[UploadFile]] = File(None, description="image files"),
                  srv: Server = Depends(server)) -> dict:
    engine = srv.engine
    if explain:
        engine.require("explain")
    threshold = check_unknown(unknown)
    checked = await read_uploads(srv, files, keep=engine.model_input)
    results = await until_done(request, lambda cancel: engine.predict(project_id, [c.kept for c in checked],
                                                                      explain, cancel, threshold))
    predictions = []
    for item, upload in zip(results, checked):
        entry = {"name": upload.name, "predicted": item["predicted"], "probabilities": item["probabilities"],
                 **{k: v for k, v in item.items() if k.startswith("unknown") or k == "adaptation"}}
        if "heatmap" in item:
            entry["heatmap"] = "data:image/png;base64," + base64.b64encode(item["heatmap"]).decode()
        predictions.append(entry)
    return {"predictions": predictions}
