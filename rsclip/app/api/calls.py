"""The API's JSON requests as library calls, each validated field by field before the library sees it:
searches (:func:`search`), labels, detections, previews and table info. Every function here is synchronous and
runs on a worker thread; what it returns is JSON-ready."""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from rsclip.app.api import features, settings
from rsclip.app.records import arrow_records, records
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.table import snapshots, tiles
from rsclip.table.rows import is_tile_id

if TYPE_CHECKING:
    from rsclip.search.searchers import Found

# The fields a search body may carry: one query (text, vector, tile_id, image or positive/negative examples)
# and these options and filters (those of rsclip.query).
QUERY_FIELDS = ("text", "vector", "tile_id", "image", "positive")
FILTER_FIELDS = ("bbox", "near", "polygon", "where", "date", "max_cloud", "max_nodata")
OPTION_FIELDS = ("k", "negative", "include_self", "allow_model_mismatch", "db", "table")
# The fields of a detections request (query parameters of a GET, a JSON body of a POST).
DETECTION_FIELDS = ("min_score", "k", *FILTER_FIELDS, "db", "table")
DEFAULT_DETECTIONS = 20  # as rsclip review


def checked_fields(body: dict, allowed) -> None:
    """Refuse a body with a field outside ``allowed``, naming it (a typo must not be silently ignored)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} (allowed: {', '.join(allowed)})")


def filters_of(body: dict) -> dict:
    """The filter keywords of a body (a GeoJSON polygon object becomes its text)."""
    found = {name: body.get(name) for name in FILTER_FIELDS}
    if isinstance(found["polygon"], dict):
        found["polygon"] = json.dumps(found["polygon"])
    for name in ("bbox", "near"):
        if found[name] is not None and not isinstance(found[name], list):
            raise InvalidInput(f"{name} must be a list of numbers")
    return found


def example_ids(value, what: str) -> list[str] | None:
    """Example tile ids of a body: a list of tile ids (never paths or texts: a service opens no file a
    client names)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > settings.MAX_EXAMPLES:
        raise InvalidInput(f"{what} must be a list of at most {settings.MAX_EXAMPLES} tile ids")
    bad = [v for v in value if not is_tile_id(v)]
    if bad:
        raise InvalidInput(f"{what} takes tile ids (32 hex characters), got {str(bad[0])[:80]!r}")
    return value


def vector_of(value) -> np.ndarray:
    """A query vector: a list of at most :data:`~settings.MAX_VECTOR_VALUES` finite numbers."""
    if not isinstance(value, list) or not value or len(value) > settings.MAX_VECTOR_VALUES:
        raise InvalidInput(f"vector must be a list of 1-{settings.MAX_VECTOR_VALUES} numbers")
    if not set(map(type, value)) <= {int, float}:  # never strings, booleans or lists NumPy would convert
        raise InvalidInput("vector must hold finite numbers only")
    try:
        with np.errstate(over="ignore"):
            vector = np.asarray(value, dtype=np.float32)
    except OverflowError:  # an integer beyond any float
        vector = np.asarray([math.inf])
    if not np.isfinite(vector).all():  # NaN, infinities and numbers beyond float32 (which become infinite)
        raise InvalidInput("vector must hold finite numbers only")
    return vector


def image_of(value) -> np.ndarray:
    """A query image: ``{"name": "scene.png", "data": "<base64>"}``, decoded as the format its name claims
    under the web app's upload limits."""
    from rsclip.app.web.data.uploads import MAX_UPLOAD_BYTES, decode_upload

    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not isinstance(value.get("data"), str):
        raise InvalidInput('image must be {"name": "file.png", "data": "<base64 bytes>"}')
    name = os.path.basename(value["name"])[:200] or "upload"
    if len(value["data"]) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise LimitExceeded(f"{name}: larger than the upload limit of {MAX_UPLOAD_BYTES:,} bytes")
    try:
        data = base64.b64decode(value["data"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name}: data is not base64") from None
    return decode_upload(data, name)


def search(db: str, table: str, body: dict, *, resident: bool = True) -> Found:
    """What a search body finds: exactly one query field, the options and filters of :func:`rsclip.query`
    (checked in its order: the query, then ``k`` and the filters), ranked as it ranks them."""
    from rsclip.search.examples import search_examples
    from rsclip.search.query import search_query, search_similar
    from rsclip.search.request import Request

    checked_fields(body, QUERY_FIELDS + FILTER_FIELDS + OPTION_FIELDS)
    given = [name for name in QUERY_FIELDS if body.get(name) is not None]
    if len(given) != 1 and not (given == [] and body.get("negative") is not None):
        raise InvalidInput(f"give exactly one of {', '.join(QUERY_FIELDS)} (with negative for examples), "
                           f"got {len(given)}")
    mode = given[0] if given else "positive"
    asked = query_of(body, mode) if mode in ("text", "vector", "image") else None
    if mode == "positive":
        positive = example_ids(body.get("positive"), "positive") or []
        negative = example_ids(body.get("negative"), "negative")
    request = Request.of(db, table, body.get("k", 10), **filters_of(body))
    allow = bool(body.get("allow_model_mismatch", False))
    if mode == "tile_id":
        return search_similar(request, body["tile_id"], resident=resident)
    if mode == "positive":
        return search_examples(request, positive, negative, resident=resident, allow_model_mismatch=allow)
    return search_query(request, asked, exclude_self=not bool(body.get("include_self", False)), resident=resident,
                        allow_model_mismatch=allow)


def query_of(body: dict, mode: str):
    """The query of a body's ``text``, ``vector`` or ``image`` field (``mode``), checked; negative examples go
    with positive examples only."""
    if body.get("negative") is not None:
        raise InvalidInput("negative examples go with positive examples only")
    return {"text": text_of, "vector": vector_of, "image": image_of}[mode](body[mode])


def text_of(value):
    """A text query: a string (the model bounds its length)."""
    from rsclip.search.encoding import Text

    if not isinstance(value, str):
        raise InvalidInput("text must be a string")
    return Text(value)


def answer_of(found: Found) -> dict[str, Any]:
    """What a search found as the API answers it: its rows (as ``rsclip ... --json`` prints them) and the path
    that answered."""
    return {"results": arrow_records(found.rows), "search_path": found.path, "search_note": found.note}


def detection_params(params: dict[str, str]) -> dict:
    """A detections GET's query parameters as the body of a POST: numbers read, ``bbox`` and ``near`` as
    comma-separated numbers."""
    checked_fields(params, DETECTION_FIELDS)
    body: dict[str, Any] = dict(params)
    for name in ("bbox", "near"):
        if name in body:
            body[name] = [features.number(part, name, 0.0) for part in body[name].split(",")]
    for name in ("min_score", "max_cloud", "max_nodata"):
        if name in body:
            body[name] = features.number(body[name], name, 0.0)
    if "k" in body:
        body["k"] = int(body["k"]) if body["k"].isdigit() else body["k"]
    return body


def detections(db: str, table: str, label: str, body: dict, min_score: float) -> dict[str, Any]:
    """The ``k`` best detections of ``label`` at or above ``min_score`` (the body's, else the service's) under the
    filters of a search, as ``rsclip review`` lists them (without footprints: the collections carry them), and
    how many qualify (``matched``)."""
    from rsclip.search.review import review_detections

    checked_fields(body, DETECTION_FIELDS)
    k = body.get("k", DEFAULT_DETECTIONS)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= settings.MAX_PAGE:
        raise InvalidInput(f"k must be an integer in [1, {settings.MAX_PAGE}]")
    floor = body.get("min_score", min_score)
    frame = review_detections(db, label, min_score=floor, table=table, **filters_of(body))
    shown = frame.head(k).drop(columns=[tiles.FOOTPRINT], errors="ignore")
    return {"results": records(shown), "matched": len(frame)}


def preview_png(db: str, table: str, tile_id: str, size: int) -> bytes:
    """A PNG preview of tile ``tile_id`` (its window read from its source), at most ``size`` pixels a side."""
    from PIL import Image

    from rsclip.app.web.data.previews import read_preview
    from rsclip.errors import NotFound
    from rsclip.geo.windows import Window
    from rsclip.table.rows import rows_by_id

    if not is_tile_id(tile_id):
        raise InvalidInput(f"not a tile id: {tile_id[:80]!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise InvalidInput("size must be an integer in [16, 1024]")
    found = rows_by_id(snapshots.read_table(db, table), [tile_id], (tiles.URI, *tiles.WINDOW_COLUMNS)).to_pylist()
    if not found:
        raise NotFound(f"tile {tile_id} is not in the table")
    row = found[0]
    pixels = read_preview(row[tiles.URI], Window(*(row[c] for c in tiles.WINDOW_COLUMNS)), size)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
