"""OGC API - Features (Part 1: Core, GeoJSON, OAS 3.0) over a tile table: each label set is a collection of
its labelled tiles (``labels-<label>``) and each label the detection job scored is a collection of its
detections at or above a score (``detections-<label>``). Features carry the tiles' true footprints (CRS84) and
the properties ``rsclip export`` writes; every request reads the tables anew, so a review or a detection run
shows on the next one. Items page by ``limit``/``offset`` with ``next`` links; ``bbox`` keeps features whose
footprint intersects it, ``datetime`` those acquired then."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import numpy as np

from rsclip.app.api import settings
from rsclip.errors import InvalidInput, NotFound
from rsclip.table import snapshots, tiles

CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
)
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
GEOJSON = "application/geo+json"
KINDS = ("detections", "labels")
ITEM_PARAMETERS = ("limit", "offset", "bbox", "bbox-crs", "datetime", "f", "min_score", "crs")
FORMATS = ("json", "geojson")


@dataclass(frozen=True)
class Collection:
    """A collection: ``kind`` (detections or labels) of ``label``."""

    kind: str
    label: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.label}"

    @classmethod
    def parse(cls, collection_id: str) -> "Collection":
        """The collection named ``collection_id`` (``detections-<label>`` or ``labels-<label>``); 404 otherwise."""
        from rsclip.table.labels import LABEL_PATTERN

        kind, _, label = collection_id.partition("-")
        if kind not in KINDS or not LABEL_PATTERN.fullmatch(label):
            raise NotFound(f"no collection {collection_id[:100]!r}: collections are detections-LABEL and labels-LABEL")
        return cls(kind, label)


def collections_of(db: str, table: str) -> list[Collection]:
    """The table's collections: one per label the detection job scored, one per label set."""
    from rsclip.table.detections import detected_labels
    from rsclip.table.labels import LABEL, label_sets

    found = [Collection("detections", label) for label in detected_labels(db, table)]
    return found + [Collection("labels", str(label)) for label in label_sets(db, table=table)[LABEL]]


def landing(base: str) -> dict:
    """The landing page: links to the API description, the conformance classes and the collections."""
    return {"title": "rsclip", "description": "Detections and labels of an rsclip tile table",
            "links": [link(base, "self", "application/json", "this document"),
                      link(f"{base}openapi.json", "service-desc", "application/vnd.oai.openapi+json;version=3.0",
                           "the API definition"),
                      link(f"{base}conformance", "conformance", "application/json", "conformance classes"),
                      link(f"{base}collections", "data", "application/json", "the collections")]}


def link(href: str, rel: str, type: str, title: str | None = None) -> dict:
    found = {"href": href, "rel": rel, "type": type}
    return found | ({"title": title} if title else {})


def describe(base: str, collection: Collection, min_score: float, extent: list | None = None) -> dict:
    """The description of ``collection`` (its extent when given: ``[lon_min, lat_min, lon_max, lat_max]``)."""
    url = f"{base}collections/{quote(collection.id)}"
    title = (f"detections of {collection.label} (score >= {min_score:g})" if collection.kind == "detections"
             else f"tiles labelled {collection.label} (+1 / -1)")
    found = {"id": collection.id, "title": title, "itemType": "feature", "crs": [CRS84],
             "links": [link(url, "self", "application/json"), link(f"{url}/items", "items", GEOJSON, title)]}
    if extent is not None:
        found["extent"] = {"spatial": {"bbox": [extent], "crs": CRS84}}
    return found


@dataclass(frozen=True)
class ItemQuery:
    """The parameters of an items request, validated: ``limit``, ``offset``, ``bbox``, ``date`` (the
    ``datetime`` interval as rsclip reads dates) and ``min_score``."""

    limit: int
    offset: int
    bbox: tuple | None
    date: str | None
    min_score: float

    @classmethod
    def of(cls, params, default_min_score: float) -> "ItemQuery":
        unknown = sorted(set(params) - set(ITEM_PARAMETERS))
        if unknown:
            raise InvalidInput(f"unknown parameter {unknown[0][:50]!r} (known: {', '.join(ITEM_PARAMETERS)})")
        if params.get("f", "json") not in FORMATS or params.get("bbox-crs", CRS84) != CRS84 or \
                params.get("crs", CRS84) != CRS84:
            raise InvalidInput(f"only GeoJSON (f=json) in {CRS84} is served")
        return cls(limit=integer(params.get("limit"), "limit", settings.DEFAULT_PAGE, 1, settings.MAX_PAGE),
                   offset=integer(params.get("offset"), "offset", 0, 0, 10**9),
                   bbox=bbox_of(params.get("bbox")), date=date_of(params.get("datetime")),
                   min_score=number(params.get("min_score"), "min_score", default_min_score))


def integer(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidInput(f"{name} must be an integer in [{low}, {high}], got {text[:30]!r}")
    return int(text)


def number(text: str | None, name: str, default: float) -> float:
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, got {text[:30]!r}") from None


def bbox_of(text: str | None) -> tuple | None:
    """``bbox=lon_min,lat_min,lon_max,lat_max`` (2D, CRS84)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise InvalidInput("bbox must be lon_min,lat_min,lon_max,lat_max")
    return tuple(number(p, "bbox", 0.0) for p in parts)


def date_of(text: str | None) -> str | None:
    """The ``datetime`` parameter (an instant, or ``start/end`` with ``..`` or nothing for an open end) as
    rsclip's date filter reads it."""
    if text is None:
        return None
    if len(text) > 100:
        raise InvalidInput("datetime is too long")
    return text if "/" in text else f"{text}/{text}"


def selected(db: str, table: str, collection: Collection, asked: ItemQuery):
    """The GeoDataFrame of every feature of ``collection`` the query keeps, best first (detections) or by id."""
    from rsclip.search import export

    if collection.kind == "detections":
        return export.export_frame(db, table=table, detections=collection.label, min_score=asked.min_score,
                                   bbox=asked.bbox, date=asked.date)
    gdf = export.label_features(db, collection.label, table=table)
    return gdf[kept(gdf, asked)].reset_index(drop=True)


def tables_state(db: str, table: str) -> tuple:
    """The versions of the tables collections are read from (tiles, detections, labels; None for one not
    written yet): a collection built at one state stays what it is until one of them changes. Each is read
    as a search reads its table (:func:`rsclip.table.snapshots.read_table`): a page of a collection reopens
    none that is unchanged."""
    from rsclip.table.detections import detections_table_name
    from rsclip.table.labels import labels_table_name

    companions = (detections_table_name(table), labels_table_name(table))
    return (snapshots.read_table(db, table).version, *(companion_version(db, name) for name in companions))


def companion_version(db: str, name: str) -> int | None:
    """The version of the companion table ``name`` (labels, detections), None while it is not written."""
    try:
        return snapshots.read_table(db, name).version
    except NotFound:
        return None


class BuiltCollections:
    """The collections built lately, with the state of the tables they were built from (:func:`tables_state`):
    paging through one (QGIS and GDAL ask page after page) builds it once; a review, a label or a detection run
    writes a new version and the next request builds anew. At most ``size`` collections and ``max_features``
    features in all are kept (the oldest go first; a larger one is built for its request and not kept)."""

    def __init__(self, size: int = 4, max_features: int = 500_000):
        self.size, self.max_features = size, max_features
        self._built: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, db: str, table: str, collection: Collection, asked: ItemQuery):
        key = (collection, asked.bbox, asked.date, asked.min_score, tables_state(db, table))
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
        gdf = selected(db, table, collection, asked)
        if len(gdf) <= self.max_features:
            with self._lock:
                self._built[key] = gdf
                while len(self._built) > self.size or sum(map(len, self._built.values())) > self.max_features:
                    self._built.popitem(last=False)
        return gdf


def kept(gdf, asked: ItemQuery) -> np.ndarray:
    """Mask of the features of ``gdf`` inside the query's box and dates (unknown dates never pass)."""
    import pandas as pd
    import shapely

    from rsclip.geo import dates
    from rsclip.search.filters import validate_bbox

    mask = np.ones(len(gdf), dtype=bool)
    if asked.bbox is not None and len(gdf):
        mask &= np.asarray(gdf.geometry.intersects(shapely.box(*validate_bbox(asked.bbox))), dtype=bool)
    if asked.date is not None:
        period = dates.parse_range(asked.date)
        if tiles.DATETIME in gdf.columns and len(gdf):
            when = pd.to_datetime(gdf[tiles.DATETIME], utc=True, format="ISO8601")
            micros = np.where(when.isna(), dates.NULL_MICROS, when.astype("int64") // 1000)
            mask &= period.contains(micros)
        else:
            mask &= False
    return mask


def items(gdf, asked: ItemQuery, url: str, params: dict) -> dict:
    """One page of ``gdf`` as a GeoJSON FeatureCollection with OGC API's counts and ``next``/``prev`` links
    (``url`` and ``params``: the request's, from which the links are built)."""
    page = gdf.iloc[asked.offset: asked.offset + asked.limit]
    found = json.loads(page.to_json(na="null", show_bbox=False, drop_id=True)) if len(page) else {
        "type": "FeatureCollection", "features": []}
    for feature in found["features"]:
        feature["id"] = feature["properties"].get(tiles.ID)
    links = [link(page_url(url, params, asked.offset), "self", GEOJSON)]
    if asked.offset + asked.limit < len(gdf):
        links.append(link(page_url(url, params, asked.offset + asked.limit), "next", GEOJSON, "next page"))
    if asked.offset > 0:
        links.append(link(page_url(url, params, max(0, asked.offset - asked.limit)), "prev", GEOJSON))
    found.pop("crs", None)
    return found | {"numberMatched": len(gdf), "numberReturned": len(page), "links": links}


def page_url(url: str, params: dict, offset: int) -> str:
    return f"{url}?{urlencode({**params, 'offset': str(offset)})}"


def extent_of(gdf) -> list | None:
    """``[lon_min, lat_min, lon_max, lat_max]`` of the features with a footprint (None: none has one)."""
    bounds = gdf.geometry.dropna()
    bounds = bounds[~bounds.is_empty]
    return [float(v) for v in bounds.total_bounds] if len(bounds) else None
