"""What stands between a request and the library: the bearer token (:class:`TokenGuard`), bounded bodies read
within a deadline (:func:`read_json`), bounded concurrency (:class:`Slots`), and rsclip's errors as HTTP
answers with one-line messages that name no server path (:func:`error_answer`)."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

from rsclip import errors
from rsclip.app.api import settings

log = logging.getLogger("rsclip.api")

# rsclip's errors, most specific first, and the HTTP status each answers with.
STATUS = ((errors.LimitExceeded, 413), (errors.NotFound, 404), (errors.ModelMismatch, 409),
          (errors.UnsafeInput, 400), (errors.InvalidInput, 400), (errors.StoreUnavailable, 503),
          (errors.ClusterUnfit, 503), (errors.RsclipError, 400))
MAX_MESSAGE_CHARS = 500


class ApiError(Exception):
    """An answer other than 200 decided by the service itself (busy, too slow, unauthorised)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class TokenGuard:
    """ASGI middleware: every HTTP request carries ``Authorization: Bearer <token>`` (compared in constant
    time), else 401. With no token configured, requests pass (the service is loopback-bound then)."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.token is None or self.authorised(scope):
            await self.app(scope, receive, send)
            return
        answer = JSONResponse({"code": "Unauthorized", "description": "a valid bearer token is required"},
                              status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await answer(scope, receive, send)

    def authorised(self, scope) -> bool:
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.token)


class Slots:
    """At most ``size`` holders at once; :meth:`take` refuses (503) instead of waiting when all are held."""

    def __init__(self, size: int, what: str):
        self.size, self.what, self.held = size, what, 0

    def take(self) -> "Slots":
        if self.held >= self.size:
            raise ApiError(503, f"busy: {self.held} {self.what} in progress, try again shortly",
                           {"Retry-After": "1"})
        self.held += 1
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.held -= 1


async def read_body(request: Request, large: Slots) -> bytes:
    """The request's body: at most :data:`~settings.MAX_BODY_BYTES` (413), all of it within
    :data:`~settings.BODY_TIMEOUT_S` seconds (408); bodies that may be large hold one of ``large`` meanwhile."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > settings.MAX_BODY_BYTES):
        raise ApiError(413, f"the body is larger than {settings.MAX_BODY_BYTES:,} bytes")
    small = declared is not None and int(declared) <= settings.SMALL_BODY_BYTES
    with (contextlib.nullcontext() if small else large.take()):
        chunks, size = [], 0
        with anyio.move_on_after(settings.BODY_TIMEOUT_S) as deadline:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.MAX_BODY_BYTES:
                    raise ApiError(413, f"the body is larger than {settings.MAX_BODY_BYTES:,} bytes")
                chunks.append(chunk)
        if deadline.cancelled_caught:
            raise ApiError(408, f"the body did not arrive within {settings.BODY_TIMEOUT_S:.0f} s")
        return b"".join(chunks)


async def read_json(request: Request, large: Slots) -> dict:
    """The request's body as a JSON object (400 otherwise), read by :func:`read_body`."""
    body = await read_body(request, large)
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidInput("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise errors.InvalidInput("the body must be a JSON object")
    return value


def status_of(error: Exception) -> int:
    """The HTTP status of an rsclip error (500 for anything else: a bug)."""
    for kind, status in STATUS:
        if isinstance(error, kind):
            return status
    return 500


def scrubbed(message: str, db: str) -> str:
    """``message`` on one line, at most :data:`MAX_MESSAGE_CHARS`, with the database's location (and this
    user's home) replaced by names: answers never show server paths."""
    places = {str(db): "DB", os.path.realpath(str(db)): "DB", os.path.expanduser("~"): "~"}
    for place, name in sorted(places.items(), key=lambda p: -len(p[0])):
        if len(place) > 1:
            message = message.replace(place, name)
    line = " ".join(message.split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS - 3] + "..."


def error_answer(error: Exception, db: str) -> JSONResponse:
    """The JSON answer to ``error``: ``{"code", "description"}`` (OGC API's exception shape). Errors that are
    not rsclip's are logged with their traceback here and answered as a bare 500."""
    if isinstance(error, ApiError):
        status, headers, message = error.status, error.headers, str(error)
    else:
        status, headers = status_of(error), {}
        if status == 500:
            log.exception("internal error", exc_info=error)
            message = "internal error (the service's log has the details)"
        else:
            message = str(error)
    code = type(error).__name__ if not isinstance(error, ApiError) else {
        401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed", 408: "RequestTimeout", 413: "LimitExceeded",
        503: "Busy"}.get(status, "Error")
    return JSONResponse({"code": code, "description": scrubbed(message, db)}, status_code=status, headers=headers)
