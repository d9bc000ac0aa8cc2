"""``/projects/{p}/estimate``: the cross-validated accuracy estimate of a project's classifier."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, Request

from ..context import EstimateBody, Id, Server, server, until_done

router = APIRouter()


@router.post("/projects/{project_id}/estimate",
             summary="Estimated accuracy on new images: interval, per-class scores, confusion matrix")
async def estimate(request: Request, project_id: Id, body: Optional[EstimateBody] = None,
                   srv: Server = Depends(server)) -> dict:
    body = body or EstimateBody()
    result = await until_done(request, lambda cancel: srv.engine.estimate(project_id, body.repeats, body.holdout,
                                                                          body.seed, cancel))
    return result.to_json() | {"summary": result.summary()}
