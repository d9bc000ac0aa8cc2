"""Start the server: check everything cheap first (extra installed, token for a public host, port free, data
folder writable), then load the model, then serve with uvicorn until Ctrl-C."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import FewshotError


def check_serve_installed() -> None:
    missing = []
    for module in ("fastapi", "uvicorn", "multipart"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise FewshotError(f"fewshot serve needs {', '.join(missing)}: pip install 'fewshot[serve]'")


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: ``--token``, else ``$FEWSHOT_TOKEN``; mandatory when ``host`` is not loopback."""
    from .guard import is_loopback

    token = token if token is not None else os.environ.get("FEWSHOT_TOKEN") or None
    if token is not None and len(token) < 8:
        raise FewshotError("the access token must have at least 8 characters (e.g. python -c 'import secrets; "
                           "print(secrets.token_urlsafe())')")
    if token is None and not is_loopback(host):
        raise FewshotError(f"--host {host} makes the server reachable from other machines: give an access token with "
                           "--token or FEWSHOT_TOKEN (or keep the default --host 127.0.0.1)")
    return token


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise FewshotError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another program uses it, "
                               "or the address is not this machine's; choose another --port or --host") from None


def serve(classifier_factory, data_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, limits=None, access_log: bool = False, cache_mb: float = 2048,
          max_jobs: int = 1) -> None:
    """Serve until interrupted. ``classifier_factory()`` builds the (unfitted) classifier whose model every
    project shares; it is called after the cheap checks, since loading a model can take a while. Requests are
    logged one line each (:mod:`.request_log`): every one with ``access_log``, else errors and slow ones."""
    check_serve_installed()
    import uvicorn

    from ..atomic import check_output
    from .app import create_app
    from .guard import is_loopback
    from .engine import Engine
    from .request_log import RequestLog
    from .store import Store
    from .uploads import Limits

    token = resolve_token(host, token)
    check_port(host, port)
    folder = check_output(data_dir, "--data-dir", folder=True)
    store = Store(folder)
    base = classifier_factory()
    engine = Engine(base, store, cache_mb=cache_mb, max_jobs=max_jobs)
    app = RequestLog(create_app(engine, limits or Limits(), token, loopback_only=is_loopback(host)), access_log)
    shown = f"[{host}]" if ":" in host else host
    print(f"fewshot serve: open http://{shown}:{port}/ in a browser (API docs at /docs); model {base.source}, "
          f"projects in {Path(folder).resolve()}" + ("; requests need the access token" if token else ""), flush=True)
    print("press Ctrl-C to stop", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
