"""Images: upload one or many to a class, list, delete, the original file and its thumbnail."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..context import Id, Server, class_view, embed_soon, image_view, read_uploads, server
from ..store import NewImage
from ..uploads import ALLOWED_FORMATS

router = APIRouter()
PRIVATE_FILE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}


@router.post("/projects/{project_id}/classes/{class_id}/images", status_code=201,
             summary="Upload one or many images to a class (multipart field 'files')")
async def upload_images(project_id: Id, class_id: Id,
                        files: Optional[list[UploadFile]] = File(None, description="image files"),
                        srv: Server = Depends(server)) -> dict:
    checked = await read_uploads(srv, files)
    store = srv.store

    def store_them():
        new = [NewImage(c.data, c.sha256, c.name, c.format, c.width, c.height, c.kept) for c in checked]
        added, skipped = store.add_images(project_id, class_id, new, srv.limits.max_images_per_project)
        embed_soon(srv.engine, project_id, added)
        entry = store.class_info(project_id, class_id)
        return {"added": [image_view(project_id, i) for i in entry["images"] if i["id"] in set(added)],
                "skipped": skipped}

    return await run_in_threadpool(store_them)


@router.get("/projects/{project_id}/classes/{class_id}/images", summary="The images of a class")
def list_images(project_id: Id, class_id: Id, srv: Server = Depends(server)) -> dict:
    return {"images": class_view(srv.store, project_id, class_id)["images"]}


@router.delete("/projects/{project_id}/images/{image_id}", status_code=204, summary="Delete an image")
def delete_image(project_id: Id, image_id: Id, srv: Server = Depends(server)) -> Response:
    srv.store.delete_image(project_id, image_id)
    return Response(status_code=204)


@router.get("/projects/{project_id}/images/{image_id}/file", summary="The uploaded file")
def image_file(project_id: Id, image_id: Id, srv: Server = Depends(server)) -> Response:
    image = srv.store.image(project_id, image_id)
    return FileResponse(srv.store.image_path(image["sha256"]), media_type=ALLOWED_FORMATS[image["format"]],
                        headers=PRIVATE_FILE)


@router.get("/projects/{project_id}/images/{image_id}/thumbnail", summary="A PNG thumbnail (160 px)")
def image_thumbnail(project_id: Id, image_id: Id, srv: Server = Depends(server)) -> Response:
    image = srv.store.image(project_id, image_id)
    return FileResponse(srv.store.thumbnail_path(image["sha256"]), media_type="image/png", headers=PRIVATE_FILE)
