"""``/projects/{p}/classes``: create, read, rename, delete classes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..context import Id, NameBody, Server, class_view, server
from ..uploads import check_name

router = APIRouter()


@router.post("/projects/{project_id}/classes", status_code=201, summary="Create a class")
def create_class(project_id: Id, body: NameBody, srv: Server = Depends(server)) -> dict:
    return class_view(srv.store, project_id, srv.store.create_class(project_id, check_name(body.name, "class")))


@router.get("/projects/{project_id}/classes/{class_id}", summary="A class with its images")
def get_class(project_id: Id, class_id: Id, srv: Server = Depends(server)) -> dict:
    return class_view(srv.store, project_id, class_id)


@router.patch("/projects/{project_id}/classes/{class_id}", summary="Rename a class")
def rename_class(project_id: Id, class_id: Id, body: NameBody, srv: Server = Depends(server)) -> dict:
    srv.store.rename_class(project_id, class_id, check_name(body.name, "class"))
    return class_view(srv.store, project_id, class_id)


@router.delete("/projects/{project_id}/classes/{class_id}", status_code=204, summary="Delete a class and its images")
def delete_class(project_id: Id, class_id: Id, srv: Server = Depends(server)) -> Response:
    srv.store.delete_class(project_id, class_id)
    return Response(status_code=204)
