"""The API's routes, one router per resource, mounted under ``/api/v1`` by :func:`fewshot.serve.app.create_app`;
each route gets the :class:`~fewshot.serve.context.Server` as a dependency. A resource is a module and a line in
``ROUTERS``."""

from __future__ import annotations

from . import classes, estimates, exports, images, predictions, projects

ROUTERS = [projects.router, classes.router, images.router, predictions.router, estimates.router, exports.router]

__all__ = ["ROUTERS"]
