"""The ASGI guard in front of the whole server: request-body caps, the access token, cross-site and DNS-rebinding
refusals, and the bound on request bytes being received at once, all decided from the headers before a byte of
the body is read; and the one JSON error response every refusal uses."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi.responses import JSONResponse, Response

from .uploads import Limits, size_text


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of everything: request-body cap, token check and cross-site refusal, decided
    from the headers before a byte of the body is read; a body sent without a length (chunked) is counted as
    it arrives and cut off at the cap."""

    def __init__(self, app, limits: Limits, token: str | None, loopback_only: bool):
        self.app, self.limits, self.token, self.loopback_only = app, limits, token, loopback_only
        self.inflight = 0  # bytes of the request bodies being received (the event loop's thread only)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        length = headers.get("content-length", "")
        reserved = int(length) if length.isdigit() else (self.limits.request_cap if scope["method"] in
                                                         ("POST", "PUT", "PATCH") else 0)
        if reserved and self.inflight and self.inflight + reserved > self.limits.max_inflight_bytes:
            busy = error(429, f"the server is receiving {size_text(self.inflight)} of other uploads (limit "
                              f"{size_text(self.limits.max_inflight_bytes)}): send this again in a few seconds",
                         {"Retry-After": "5"})
            return await busy(scope, receive, send)
        self.inflight += reserved
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.inflight -= reserved

    async def _guarded(self, scope, receive, send):
        cap, seen = self.limits.request_cap, 0
        started = too_large = False

        async def counted_receive():
            """The body as it comes; past the cap, the client "disconnects" (a raised exception would reach the
            app's body parsing, which answers any failure with a 400)."""
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            """The app's answer, except when the body was cut off before it started: the 413 replaces it."""
            nonlocal started
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not too_large:  # the app failing on the body we cut off is not an error of its own
                raise
        if too_large and not started:
            await self._too_large()(scope, receive, send)

    def _too_large(self) -> JSONResponse:
        return error(413, f"the request is larger than {size_text(self.limits.request_cap)}: send fewer or "
                          "smaller files per request")

    def _refusal(self, scope, headers: dict) -> Response | None:
        path = scope["path"]
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.request_cap:
            return self._too_large()
        host = headers.get("host", "")
        if self.loopback_only:
            # DNS rebinding: a web page on another name that resolves to 127.0.0.1 must not reach the API
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if not is_loopback(name):
                return error(403, f"host '{host}' refused: this server answers only to 127.0.0.1 / localhost")
        origin = headers.get("origin")
        # "null" is a foreign origin too: sandboxed frames, file:// pages and some redirects send it; the page
        # this server serves sends its own origin (fetch from the same origin never sends "null")
        if origin and origin.split("://", 1)[-1] != host:
            return error(403, f"cross-site request from {origin} refused: use the page this server serves")
        if self.token and path.startswith("/api/"):
            given = headers.get("authorization", "")
            given = given[7:].strip() if given.lower().startswith("bearer ") else headers.get("x-fewshot-token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return error(401, "missing or wrong access token: send 'Authorization: Bearer TOKEN' (the token the "
                                  "server was started with; a token in the URL is not accepted, since URLs land "
                                  "in browser history and logs)", {"WWW-Authenticate": "Bearer"})
        return None
