"""How every failure is answered: JSON ``{"error": "one line"}`` with a 4xx status (our
:class:`~fewshot.errors.FewshotError` family mapped by :data:`STATUS`, validation errors, unknown routes, ids no
row can have: 404), 429 with ``Retry-After`` when busy; anything unexpected is logged with its traceback and
answered with a 500 whose body says only that."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CapabilityError, ExportError, FewshotError, InvalidImageError, NotFittedError, SupportSetError
from .guard import error
from .jobs import Busy, Cancelled
from .store import Conflict, LimitExceeded, NotFound
from .uploads import BadImage, BadName, NotAnImage, TooLarge

log = logging.getLogger("fewshot.serve")
STATUS: dict[type, int] = {NotFound: 404, Conflict: 409, SupportSetError: 409, NotFittedError: 409,
                           LimitExceeded: 413, TooLarge: 413, NotAnImage: 415, BadImage: 400, BadName: 400,
                           InvalidImageError: 400, ExportError: 400, CapabilityError: 400, Busy: 429, FewshotError: 400}


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into one JSON error line."""
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
