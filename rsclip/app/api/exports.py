"""The API's exports (``POST /api/export``): the file ``rsclip export`` or ``rsclip label export`` would write, as
its bytes, so that a command answered through a running service writes what it writes alone. The body names one
source: a query (``text``, ``vector`` or ``image``), examples (``positive`` with ``negative``), the ``detections``
of a label set (by ``min_score``) or a label set's ``labels``; with ``format``, ``k``, ``dissolve`` and the
filters of a search. An answer holds at most :data:`~rsclip.app.api.settings.MAX_EXPORT_FEATURES` features."""

from __future__ import annotations

from dataclasses import dataclass

from rsclip.app.api import calls, settings
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.search.export_formats import FORMATS, export_format

SOURCES = ("text", "vector", "image", "positive", "detections", "labels")
EXPORT_FIELDS = (*SOURCES, "negative", "k", "min_score", "dissolve", "format", *calls.FILTER_FIELDS, "db", "table")
LABEL_EXPORT_FIELDS = ("labels", "format", "db", "table")
DEFAULT_K = 100  # as rsclip export


@dataclass(frozen=True)
class ExportFile:
    """The bytes of an export file in ``format`` and how many ``features`` it holds."""

    data: bytes
    format: str
    features: int


def export_file(db: str, table: str, body: dict, resident: bool = True) -> ExportFile:
    """The export file a body asks for (searches through the resident copy when ``resident``). Raises
    ``InvalidInput`` for a bad body or an empty result, ``LimitExceeded`` beyond the features an answer holds."""
    from rsclip.search import export

    calls.checked_fields(body, EXPORT_FIELDS)
    if body.get("format") is None:
        raise InvalidInput(f"format is required: one of {', '.join(FORMATS)}")
    format = export_format("", body["format"])
    if source(body) == "labels":
        calls.checked_fields(body, LABEL_EXPORT_FIELDS)
        gdf = export.label_features(db, label_name(body["labels"]), table=table)
    else:
        frame = export.select(db, table=table, resident=resident, **selection(body), **calls.filters_of(body))
        bounded(len(frame))
        gdf = export.frame_features(db, frame, dissolved=flag(body.get("dissolve", False)), table=table)
    bounded(len(gdf))
    export.require_features(gdf)
    return ExportFile(export.encode(gdf, format), format, len(gdf))


def selection(body: dict) -> dict:
    """The keywords of :func:`rsclip.search.export.select` of a body: exactly one source, its ``k`` (a query
    or examples) or ``min_score`` (detections)."""
    what = source(body)
    if what == "detections":
        if body.get("k") is not None:
            raise InvalidInput("k applies to a query or examples: detections are exported by min_score")
        return {"detections": label_name(body["detections"]), "min_score": body.get("min_score")}
    k = body.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= settings.MAX_EXPORT_FEATURES:
        raise InvalidInput(f"k must be an integer in [1, {settings.MAX_EXPORT_FEATURES}]")
    if what == "positive":
        return {"positive": calls.example_ids(body.get("positive"), "positive") or [],
                "negative": calls.example_ids(body.get("negative"), "negative"), "k": k,
                "min_score": body.get("min_score")}
    return {"query": calls.query_of(body, what), "k": k, "min_score": body.get("min_score")}


def source(body: dict) -> str:
    """The one source a body names (``negative`` alone counts as examples)."""
    given = [name for name in SOURCES if body.get(name) is not None]
    if given == [] and body.get("negative") is not None:
        return "positive"
    if len(given) != 1:
        raise InvalidInput(f"give exactly one of {', '.join(SOURCES)} (with negative for examples), got {len(given)}")
    return given[0]


def label_name(value) -> str:
    """A label set's name as a body gives it (the library checks the name itself)."""
    if not isinstance(value, str):
        raise InvalidInput("a label set's name must be a string")
    return value


def flag(value) -> bool:
    """``dissolve`` as a body gives it: true or false, nothing a JSON parser would call truthy."""
    if not isinstance(value, bool):
        raise InvalidInput("dissolve must be true or false")
    return value


def bounded(features: int) -> None:
    """Refuse an export of more features than an answer holds, saying how to get fewer."""
    if features > settings.MAX_EXPORT_FEATURES:
        raise LimitExceeded(f"{features:,} tiles qualify; an export through the API holds at most "
                            f"{settings.MAX_EXPORT_FEATURES:,}: raise min_score, narrow the area, or export "
                            "without the API")
