"""The service's OpenAPI 3.0 description (``/openapi.json``): every route, its parameters and bodies."""

from __future__ import annotations

from rsclip.app.api import calls, exports, settings
from rsclip.search.export_formats import MEDIA_TYPES


def parameter(name: str, where: str, kind: str, text: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "description": text,
            "schema": {"type": kind}}


def operation(summary: str, parameters=(), body: dict | None = None, answer=("application/json",)) -> dict:
    """An operation answering 200 with one of the media types ``answer`` (or rsclip's errors)."""
    found = {"summary": summary, "parameters": list(parameters),
             "responses": {"200": {"description": "the answer", "content": {kind: {} for kind in answer}},
                           "400": {"description": "bad input (one-line description)"},
                           "401": {"description": "no or a wrong bearer token"},
                           "404": {"description": "not found"}, "413": {"description": "over a limit"},
                           "503": {"description": "busy: try again (Retry-After)"}}}
    if body is not None:
        found["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return found


SEARCH_BODY = {
    "type": "object", "additionalProperties": False,
    "description": "exactly one of text, vector, tile_id, image ({name, data: base64}) or positive (tile ids, "
                   "with negative); k and the filters of rsclip.query",
    "properties": {name: {} for name in (*calls.QUERY_FIELDS, *calls.FILTER_FIELDS, *calls.OPTION_FIELDS)},
}
LABEL_BODY = {"type": "object", "properties": {"positive": {"type": "array"}, "negative": {"type": "array"},
                                               "ids": {"type": "array"}, "note": {"type": "string"}}}
DETECTIONS_BODY = {
    "type": "object", "additionalProperties": False,
    "description": f"min_score (default: the service's), k (1-{settings.MAX_PAGE}, default "
                   f"{calls.DEFAULT_DETECTIONS}) and the filters of rsclip.query",
    "properties": {name: {} for name in calls.DETECTION_FIELDS},
}
DETECTION_PARAMETERS = [parameter("min_score", "query", "number", "lowest score (default: the service's)"),
                        parameter("k", "query", "integer", f"rows, best first (1-{settings.MAX_PAGE})"),
                        parameter("bbox", "query", "string", "lon_min,lat_min,lon_max,lat_max"),
                        parameter("near", "query", "string", "lon,lat,radius_km"),
                        *(parameter(name, "query", "string", f"as rsclip.query's {name}")
                          for name in ("polygon", "where", "date")),
                        *(parameter(name, "query", "number", f"as rsclip.query's {name}")
                          for name in ("max_cloud", "max_nodata"))]
EXPORT_BODY = {
    "type": "object", "additionalProperties": False, "required": ["format"],
    "description": "exactly one of text, vector, image, positive (with negative), detections (a label set, by "
                   "min_score) or labels (a label set); format (geojson, geoparquet, csv), k (a query or examples, "
                   f"1-{settings.MAX_EXPORT_FEATURES}), dissolve and the filters of rsclip.query. The answer is "
                   f"the file; its {settings.FEATURES_HEADER} header says how many features it holds",
    "properties": {name: {} for name in exports.EXPORT_FIELDS},
}
COLLECTION = parameter("collectionId", "path", "string", "detections-LABEL or labels-LABEL")
ITEM_PARAMETERS = [parameter("limit", "query", "integer", f"page size, 1-{settings.MAX_PAGE}"),
                   parameter("offset", "query", "integer", "features to skip"),
                   parameter("bbox", "query", "string", "lon_min,lat_min,lon_max,lat_max (CRS84)"),
                   parameter("datetime", "query", "string", "an instant or start/end (.. for an open end)"),
                   parameter("min_score", "query", "number", "detections: the lowest score kept"),
                   parameter("f", "query", "string", "json")]
LABEL = parameter("label", "path", "string", "a label set")


def description() -> dict:
    """The OpenAPI document."""
    paths = {
        "/": {"get": operation("landing page (OGC API - Features)")},
        "/conformance": {"get": operation("conformance classes")},
        "/collections": {"get": operation("the collections: detections and labels of each label")},
        "/collections/{collectionId}": {"get": operation("one collection", [COLLECTION])},
        "/collections/{collectionId}/items": {"get": operation("its features, a page", [COLLECTION, *ITEM_PARAMETERS],
                                                                answer=("application/geo+json",))},
        "/collections/{collectionId}/items/{featureId}": {"get": operation(
            "one feature", [COLLECTION, parameter("featureId", "path", "string", "a tile id")],
            answer=("application/geo+json",))},
        "/api/info": {"get": operation("the table: rows, model, index, versions")},
        "/api/search": {"post": operation("rank tiles: text, vector, tile id, image or examples", body=SEARCH_BODY)},
        "/api/labels": {"get": operation("the label sets")},
        "/api/labels/{label}": {"get": operation("a label set's tiles", [LABEL]),
                                "post": operation("add labels", [LABEL], LABEL_BODY),
                                "delete": operation("remove labels (ids, or all)", [LABEL], LABEL_BODY)},
        "/api/detections/{label}": {
            "get": operation("a label's k best detections and how many qualify", [LABEL, *DETECTION_PARAMETERS]),
            "post": operation("the same, the options as a JSON body", [LABEL], DETECTIONS_BODY)},
        "/api/suggest/{label}": {"get": operation("tiles to label next: the k top-ranked and k least certain", [
            LABEL, parameter("k", "query", "integer", "tiles of each kind")])},
        "/api/export": {"post": operation("the file rsclip export or rsclip label export writes",
                                          body=EXPORT_BODY, answer=tuple(MEDIA_TYPES.values()))},
        "/api/tiles/{tileId}/preview.png": {"get": operation("a tile's preview", [
            parameter("tileId", "path", "string", "a tile id"),
            parameter("size", "query", "integer", "longest side, 16-1024")], answer=("image/png",))},
    }
    return {"openapi": "3.0.3", "info": {"title": "rsclip", "version": "1"}, "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}
