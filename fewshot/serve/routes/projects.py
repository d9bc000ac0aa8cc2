"""``/info`` and ``/projects``: the model and limits; list, create, read, rename, delete projects; a project's
adaptation setting and its job's progress."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ...errors import CapabilityError, SupportSetError
from ...inference.adaptation import can_adapt, check_adapt
from ..context import AdaptBody, Id, NameBody, Server, project_view, server
from ..uploads import check_name

router = APIRouter()


@router.get("/info", summary="The model, its capabilities and the upload limits")
def info(srv: Server = Depends(server)) -> dict:
    return srv.engine.info() | {"limits": srv.limits.to_json(), "token_required": bool(srv.token),
                                "schema_version": srv.store.schema_version()}


@router.get("/projects", summary="List projects")
def list_projects(srv: Server = Depends(server)) -> dict:
    return {"projects": [{"id": p["id"], "name": p["name"], "classes": p["classes"], "images": p["images"]}
                         for p in srv.store.list_projects()]}


@router.post("/projects", status_code=201, summary="Create a project")
def create_project(body: NameBody, srv: Server = Depends(server)) -> dict:
    return project_view(srv.store, srv.store.create_project(check_name(body.name, "project"),
                                                            srv.engine.default_adapt))


@router.get("/projects/{project_id}", summary="A project with its classes and images")
def get_project(project_id: Id, srv: Server = Depends(server)) -> dict:
    return project_view(srv.store, project_id)


@router.patch("/projects/{project_id}", summary="Rename a project")
def rename_project(project_id: Id, body: NameBody, srv: Server = Depends(server)) -> dict:
    srv.store.rename_project(project_id, check_name(body.name, "project"))
    return project_view(srv.store, project_id)


@router.delete("/projects/{project_id}", status_code=204, summary="Delete a project, its classes and images")
def delete_project(project_id: Id, srv: Server = Depends(server)) -> Response:
    srv.store.delete_project(project_id)
    srv.engine.forget(project_id)
    return Response(status_code=204)


def adaptation_view(srv: Server, project_id: int) -> dict:
    """``{adapt, state, steps_done, steps, reason, answers_from}`` of the project, starting its job when the project
    adapts and nothing adapted to its current images yet; ``state`` ``off`` when it does not adapt, ``needs
    images`` while fewer than two classes hold images."""
    adapt = srv.store.project(project_id).get("adapt", "none")
    if adapt == "none":
        return {"adapt": "none", "state": "off", "answers_from": "frozen"}
    try:
        return srv.engine.adaptation(project_id).to_json()
    except SupportSetError as exc:
        return {"adapt": adapt, "state": "needs images", "reason": str(exc), "answers_from": "frozen"}


@router.get("/projects/{project_id}/adaptation",
            summary="Whether the project's classifier adapts to its images, and the background job's progress")
def get_adaptation(project_id: Id, srv: Server = Depends(server)) -> dict:
    return adaptation_view(srv, project_id)


@router.put("/projects/{project_id}/adaptation",
            summary="Set the project's adaptation: none, top or auto (adapting runs in the background)")
def set_adaptation(project_id: Id, body: AdaptBody, srv: Server = Depends(server)) -> dict:
    adapt = check_adapt(body.adapt)
    problem = can_adapt(srv.engine.base.model_) if adapt != "none" else None
    if problem:
        raise CapabilityError(problem)
    srv.store.set_adapt(project_id, adapt)
    return adaptation_view(srv, project_id)
