"""One line per request in the server's terminal: time, client, method, path, status, duration, bytes sent.

By default only the requests worth a look are written (errors, 4xx and 5xx, and anything slower than
:data:`SLOW_SECONDS`); ``fewshot serve --access-log`` writes every one. The query string is left out (it can carry
image names), and so is any header (the access token)."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

SLOW_SECONDS = 2.0


def request_line(client: str, method: str, path: str, status: int, seconds: float, sent: int) -> str:
    """``'12:03:04 127.0.0.1 POST /api/v1/projects/x/predict 200 35 ms 1.2 kB'``."""
    size = f"{sent} B" if sent < 1000 else f"{sent / 1000:.1f} kB" if sent < 1_000_000 else f"{sent / 1e6:.1f} MB"
    took = f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
    return f"{time.strftime('%H:%M:%S')} {client} {method} {path} {status} {took} {size}"


class RequestLog:
    """ASGI middleware writing :func:`request_line` to ``stream`` when the request ends (answer sent, or client
    gone: status 499 when no answer was started)."""

    def __init__(self, app, every_request: bool = False, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.app, self.every_request, self.stream, self.clock = app, every_request, stream, clock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, answer = self.clock(), {"status": 499, "sent": 0}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["sent"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        except Exception:
            answer["status"] = 500
            raise
        finally:
            self._write(scope, answer, self.clock() - started)

    def _write(self, scope, answer: dict, seconds: float) -> None:
        if not (self.every_request or answer["status"] >= 400 or seconds >= SLOW_SECONDS):
            return
        client = (scope.get("client") or ("-",))[0]
        line = request_line(client, scope["method"], scope["path"], answer["status"], seconds, answer["sent"])
        print(line, file=self.stream or sys.stdout, flush=True)


__all__ = ["RequestLog", "SLOW_SECONDS", "request_line"]
