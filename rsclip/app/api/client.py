"""Asking a running ``rsclip api`` (``RSCLIP_API=http://host:port`` or ``--api URL``): what the command line
uses to answer through a service in milliseconds. Standard library only, so a command answered this way loads
neither torch nor LanceDB."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from rsclip.errors import InvalidInput, LimitExceeded, NotFound, RsclipError, StoreUnavailable

API_ENV = "RSCLIP_API"
TOKEN_ENV = "RSCLIP_API_TOKEN"
TIMEOUT_S = 120.0
MAX_ANSWER_BYTES = 512 * 1024 * 1024
ERRORS = {400: InvalidInput, 404: NotFound, 409: InvalidInput, 413: LimitExceeded}


def api_url(given: str | None) -> str | None:
    """The service to ask: ``given`` (``--api``), else ``$RSCLIP_API``, else None (answer locally)."""
    url = given or os.environ.get(API_ENV) or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise InvalidInput(f"the API address must be an http(s) URL, got {url[:100]!r}")
    return url.rstrip("/") + "/" if url else None


def call(url: str, path: str, body: dict | None = None, method: str | None = None) -> dict:
    """The JSON answer of ``path`` on the service at ``url`` (POST ``body`` when given). Errors the service
    reports come back as rsclip's errors with its one-line description; an unreachable service is
    ``StoreUnavailable``."""
    return json.loads(fetch(url, path, body, method)[0])


def fetch(url: str, path: str, body: dict | None = None, method: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The bytes (at most :data:`MAX_ANSWER_BYTES`) and headers (lower-case names) of the answer to ``path``,
    with the errors of :func:`call`."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path.lstrip("/"), data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", "application/json")
    token = os.environ.get(TOKEN_ENV)
    if token:
        request.add_header("Authorization", f"Bearer {token.strip()}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            content = answer.read(MAX_ANSWER_BYTES + 1)
            if len(content) > MAX_ANSWER_BYTES:
                raise LimitExceeded(f"the rsclip API answered more than {MAX_ANSWER_BYTES:,} bytes")
            return content, {name.lower(): value for name, value in answer.headers.items()}
    except urllib.error.HTTPError as error:
        raise failure(error) from None
    except (urllib.error.URLError, OSError) as error:
        raise StoreUnavailable(f"the rsclip API at {url} cannot be reached ({getattr(error, 'reason', error)})") \
            from None


def failure(error: "urllib.error.HTTPError") -> RsclipError:
    """The rsclip error of an HTTP error answer."""
    try:
        description = json.loads(error.read(64 * 1024)).get("description") or error.reason
    except (ValueError, AttributeError):
        description = str(error.reason)
    kind = ERRORS.get(error.code, RsclipError if error.code < 500 else StoreUnavailable)
    return kind(f"rsclip API: {description}")


class ApiClient:
    """Python's way to a running service: ``ApiClient("http://127.0.0.1:8600").query("airport", k=10,
    bbox=...)`` answers what ``rsclip.query(db, "airport", k=10, bbox=...)`` answers on the service's table,
    as a DataFrame (``attrs["search_path"]`` names the path that answered). ``url`` defaults to
    ``$RSCLIP_API``; the token is read from ``$RSCLIP_API_TOKEN``."""

    def __init__(self, url: str | None = None):
        found = api_url(url)
        if found is None:
            raise InvalidInput(f"no API address: pass one or set {API_ENV}")
        self.url = found

    def query(self, query=None, k: int = 10, *, positive=None, negative=None, include_self: bool = False,
              **filters):
        """Rank the service's tiles against ``query`` (a text, a vector, or the path of a local image) or
        ``positive``/``negative`` tile ids, under the filters of :func:`rsclip.query`."""
        import pandas as pd

        body = {"k": k, "include_self": include_self,
                **filter_fields(filters)}
        if positive is not None or negative is not None:
            body.update(positive=list(positive or []), negative=None if negative is None else list(negative))
        elif isinstance(query, str):
            body["text"] = query
        elif isinstance(query, os.PathLike):
            body["image"] = image_upload(query)
        else:
            body["vector"] = [float(v) for v in query]
        answer = call(self.url, "api/search", body)
        frame = pd.DataFrame(answer["results"])
        frame.attrs.update(search_path=answer.get("search_path"), search_note=answer.get("search_note"))
        return frame


def filter_fields(filters: dict) -> dict:
    """The filters given (not None) as the fields of a request body (tuples as lists)."""
    return {name: list(v) if isinstance(v, tuple) else v for name, v in filters.items() if v is not None}


def image_upload(path) -> dict:
    """A local image file as the API's ``image`` field (base64); the service checks its type and size."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise NotFound(f"image {path} not found")
    return image_field(file.name, file.read_bytes())


def image_field(name: str, data: bytes) -> dict:
    """An image's file name and bytes as the API's ``image`` field (the bytes in base64)."""
    import base64

    return {"name": name, "data": base64.b64encode(data).decode()}
