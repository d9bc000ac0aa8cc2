"""``/info`` and ``/projects``: the model and limits; list, create, read, rename, delete projects."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..context import Id, NameBody, Server, project_view, server
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
    return project_view(srv.store, srv.store.create_project(check_name(body.name, "project")))


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
