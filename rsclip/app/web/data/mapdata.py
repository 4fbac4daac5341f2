"""What the web app's map shows, as data: tile footprints as GeoJSON features coloured by score, thumbnails
placed at their tile's corners, the table's extent, and the events the map sends back, checked.

No Streamlit here (:mod:`rsclip.app.web.views.maps` draws). Footprints are the tiles' true WGS84 outlines
(:func:`rsclip.table.rows.tile_footprints`: the stored WKB, or the box of the bound columns for older
tables). The map runs in the visitor's browser, so what it sends is hostile input like any other:
:func:`parse_event` accepts three event shapes only, a clicked tile must be a tile id, and a drawn area is
bounded in characters and vertices before :func:`rsclip.search.polygons.parse_polygon` validates it
(WGS84 ranges, a valid polygon with an area).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import shapely
from PIL import Image
from shapely.geometry import mapping

from rsclip.app.web.text import describe_window
from rsclip.table import datasets, rows, tiles
from rsclip.table.rows import is_tile_id
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.search.polygons import Region, parse_polygon
from rsclip.search.searchers import SCORE

# Footprints drawn on one map (the best first), and how many of them carry a thumbnail.
MAX_MAP_FEATURES = 500
MAX_MAP_THUMBNAILS = 100
THUMBNAIL_SIDE = 96
THUMBNAIL_QUALITY = 80
# A drawn area: characters of its GeoJSON and vertices (a hand-drawn polygon has a few dozen).
MAX_AREA_CHARS = 100_000
MAX_AREA_VERTICES = 1_000
MAX_NONCE_CHARS = 64
AREA_DECIMALS = 7
EVENT_SELECT, EVENT_AREA, EVENT_CLEAR = "select", "area", "clear"
# Score colours, low to high (viridis stops): also the legend's gradient.
SCORE_COLORS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
DATA_JPEG = "data:image/jpeg;base64,"


@dataclass(frozen=True)
class MapEvent:
    """One thing a visitor did on the map: opened a tile (``tile_id``), drew an area (``area``) or cleared
    it. ``nonce`` tells a new event from the same one seen again on a rerun."""

    kind: str
    nonce: str
    tile_id: str | None = None
    area: Region | None = None


def checked_area(geometry) -> Region:
    """A drawn area (GeoJSON geometry as a dict or text) as a validated :class:`Region`.

    Raises ``LimitExceeded`` over :data:`MAX_AREA_CHARS` characters or :data:`MAX_AREA_VERTICES` vertices,
    ``InvalidInput`` for anything :func:`~rsclip.search.polygons.parse_polygon` refuses.
    """
    text = geometry if isinstance(geometry, str) else json.dumps(geometry, allow_nan=False, default=str)
    if len(text) > MAX_AREA_CHARS:
        raise LimitExceeded(f"the drawn area is {len(text):,} characters of GeoJSON, more than {MAX_AREA_CHARS:,}")
    region = parse_polygon(text)
    vertices = len(shapely.get_coordinates(region.geometry))
    if vertices > MAX_AREA_VERTICES:
        raise LimitExceeded(f"the drawn area has {vertices:,} vertices, more than {MAX_AREA_VERTICES:,}")
    return region


def parse_event(value) -> MapEvent | None:
    """The :class:`MapEvent` of a value the map component returned; None for no value.

    Raises ``InvalidInput`` (``LimitExceeded``) for anything but the three event shapes of the module doc.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput("the map sent something that is not an event")
    kind, nonce = value.get("event"), value.get("nonce")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_CHARS:
        raise InvalidInput("the map sent an event without a valid nonce")
    if kind == EVENT_SELECT:
        tile_id = value.get("id")
        if not is_tile_id(tile_id):
            raise InvalidInput("the map sent a tile that is not a tile id")
        return MapEvent(kind, nonce, tile_id=tile_id)
    if kind == EVENT_AREA:
        try:
            return MapEvent(kind, nonce, area=checked_area(value.get("geometry")))
        except InvalidInput as exc:
            raise type(exc)(f"the drawn area was refused: {exc}") from None
    if kind == EVENT_CLEAR:
        return MapEvent(kind, nonce)
    raise InvalidInput("the map sent an unknown event")


def area_geojson(region: Region) -> dict:
    """The GeoJSON geometry of ``region`` (lon/lat, RFC 7946), coordinates rounded to
    :data:`AREA_DECIMALS` decimals (about a centimetre): what is searched is what the snippet says."""
    def rounded(value):
        if isinstance(value, (list, tuple)):
            return [rounded(v) for v in value]
        return round(float(value), AREA_DECIMALS) if isinstance(value, float) else value

    geometry = mapping(region.geometry)
    return {"type": geometry["type"], "coordinates": rounded(geometry["coordinates"])}


def area_text(region: Region) -> str:
    """``region`` as a one-line GeoJSON snippet for ``rsclip query --polygon`` or ``rsclip.query(polygon=...)``."""
    return json.dumps(area_geojson(region), separators=(",", ":"))


def georeferenced(frame: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows of ``frame`` that have all four bound columns."""
    if frame.empty or not all(c in frame.columns for c in tiles.BOUNDS_COLUMNS):
        return np.zeros(len(frame), dtype=bool)
    return frame[list(tiles.BOUNDS_COLUMNS)].notna().all(axis=1).to_numpy()


def score_colors(scores: np.ndarray) -> list[str]:
    """A colour per score on :data:`SCORE_COLORS`, stretched between the lowest and highest of ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return []
    lo, hi = float(np.nanmin(scores)), float(np.nanmax(scores))
    where = (scores - lo) / (hi - lo) if hi > lo else np.full(scores.shape, 0.5)
    stops = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in SCORE_COLORS], dtype=np.float64)
    position = np.nan_to_num(where, nan=0.0) * (len(stops) - 1)
    left = np.clip(np.floor(position).astype(int), 0, len(stops) - 2)
    rgb = stops[left] + (stops[left + 1] - stops[left]) * (position - left)[:, None]
    return ["#%02x%02x%02x" % tuple(int(round(v)) for v in color) for color in rgb]


def legend(scores: np.ndarray) -> dict | None:
    """The map legend of ``scores``: their range and :data:`SCORE_COLORS`; None without scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return None
    return {"min": float(np.nanmin(scores)), "max": float(np.nanmax(scores)), "colors": list(SCORE_COLORS)}


def bounds_corners(row) -> list[list[float]] | None:
    """The top-left, top-right and bottom-left corners ``[lon, lat]`` of a tile's bound box (a north-up
    picture of a chip known only by its bounds); None without bounds."""
    values = [row.get(c) for c in tiles.BOUNDS_COLUMNS]
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    lon_min, lat_min, lon_max, lat_max = (float(v) for v in values)
    return [[lon_min, lat_max], [lon_max, lat_max], [lon_min, lat_min]]


def thumbnail_uri(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> tuple[str, list[int]]:
    """``(data URI, [width, height])``: ``pixels`` (RGB uint8) as a JPEG at most ``side`` a side."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return DATA_JPEG + base64.b64encode(buffer.getvalue()).decode("ascii"), [image.width, image.height]


def tile_features(frame: pd.DataFrame, geometries, thumbnails: dict | None = None) -> dict:
    """A GeoJSON FeatureCollection of the rows of ``frame`` (ranked, with a score column) whose footprint
    ``geometries`` (shapely, None = unknown, in the rows' order) are known: at most :data:`MAX_MAP_FEATURES`.
    ``thumbnails`` maps tile ids to ``{"thumb", "corners", "thumb_size"}`` (see :func:`thumbnail_uri`)."""
    thumbnails = thumbnails or {}
    colors = score_colors(frame[SCORE].to_numpy()) if len(frame) else []
    out = []
    for rank, (row, geometry, color) in enumerate(zip(frame.to_dict("records"), geometries, colors), start=1):
        if geometry is None:
            continue
        tile_id = str(row[tiles.ID])
        properties = {"id": tile_id, "rank": rank, "score": float(row[SCORE]), "color": color,
                      "uri": str(row[tiles.URI]), "window": describe_window(row), "thumb": None}
        properties.update(thumbnails.get(tile_id, {}))
        out.append({"type": "Feature", "geometry": mapping(geometry), "properties": properties})
        if len(out) >= MAX_MAP_FEATURES:
            break
    return json.loads(json.dumps({"type": "FeatureCollection", "features": out}))


def footprints_of(frame: pd.DataFrame, table) -> np.ndarray:
    """The footprints of the rows of ``frame`` (shapely, None where unknown), looked up in ``table``."""
    return rows.tile_footprints(frame.reset_index(drop=True), table)


def version_of(collection: dict) -> str:
    """A short hash of what a feature collection draws (the map refits when it changes)."""
    ids = [(f["properties"]["id"], round(f["properties"]["score"], 6), f["properties"]["thumb"] is not None)
           for f in collection["features"]]
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def table_extent(table) -> tuple[float, float, float, float] | None:
    """``(lon_min, lat_min, lon_max, lat_max)`` over the georeferenced tiles of ``table`` (tiles whose bounds
    wrap across the antimeridian left out); None when no tile has bounds."""
    where = f"{tiles.LON_MIN} IS NOT NULL AND {tiles.LON_MIN} <= {tiles.LON_MAX}"
    found = datasets.dataset_of(table).to_table(columns=list(tiles.BOUNDS_COLUMNS), filter=where)
    if found.num_rows == 0:
        return None
    lo = [pc.min(found.column(c)).as_py() for c in (tiles.LON_MIN, tiles.LAT_MIN)]
    hi = [pc.max(found.column(c)).as_py() for c in (tiles.LON_MAX, tiles.LAT_MAX)]
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
