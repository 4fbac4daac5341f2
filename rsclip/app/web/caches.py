"""The web app's caches: table summaries, previews, map thumbnails and footprints, feature-finder results.

Every cache is bounded in entries and holds small values, so it is bounded in bytes too: a preview is at most
``PREVIEW_SIZE``^2 RGB (~200 KB: <= ~50 MB in all), a panel preview ``PANEL_PREVIEW_SIZE``^2 (~800 KB, 16 of
them), a map thumbnail a ~5 KB JPEG data URI, the footprints of one result list at most
``MAX_MAP_FEATURES`` WKB polygons, a feature match a few MB (:mod:`rsclip.app.web.data.finder`), a timeline or a
comparison of dates the rows of one place or of at most ``MAX_K`` places, without vectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from rsclip.app.web.data import mapdata, timedata
from rsclip.app.web.data.finder import FeatureMatch, find_feature
from rsclip.app.web.data.previews import read_preview, window_corners
from rsclip.app.web.layout import PREVIEW_SIZE
from rsclip.table import tiles
from rsclip.geo.windows import Window
from rsclip.search import timeline as timelines

PREVIEW_CACHE_ENTRIES = 256
PANEL_PREVIEW_SIZE = 512
PANEL_CACHE_ENTRIES = 16
THUMBNAIL_CACHE_ENTRIES = 1024
FOOTPRINT_CACHE_ENTRIES = 64
FEATURE_CACHE_ENTRIES = 8
TIMELINE_CACHE_ENTRIES = 32
CHANGES_CACHE_ENTRIES = 8
CACHE_TTL_S = 3600


@st.cache_resource(show_spinner=False, max_entries=2)
def connection(db: str):
    """The LanceDB connection of ``db`` (one per server process)."""
    return tiles.connect(db)


@st.cache_data(ttl=60, max_entries=2, show_spinner=False)
def table_summary(db: str, table: str) -> dict:
    """``{"model", "weights", "dim", "rows", "version", "extent", "times"}`` of the tile table (weights: the
    SHA-256 of its model's weights, None when not recorded; extent: see :func:`mapdata.table_extent`; times:
    :func:`timedata.table_times`)."""
    tbl = tiles.open_table(db, table)
    model, dim = tiles.table_model(tbl)
    identity = tiles.table_weights(tbl)
    return {"model": model, "weights": identity.weights_sha256 if identity else None, "dim": dim,
            "rows": tbl.count_rows(), "version": tbl.version, "extent": table_extent(db, table, tbl.version),
            "times": table_times(db, table, tbl.version)}


@st.cache_data(ttl=CACHE_TTL_S, max_entries=4, show_spinner=False)
def table_extent(db: str, table: str, version: int):
    """:func:`mapdata.table_extent` of a table version (a scan of its bound columns: once per version)."""
    return mapdata.table_extent(tiles.open_table(db, table))


@st.cache_data(ttl=CACHE_TTL_S, max_entries=4, show_spinner=False)
def table_times(db: str, table: str, version: int) -> timedata.TableTimes:
    """:func:`timedata.table_times` of a table version (a scan of its time columns: once per version)."""
    return timedata.table_times(tiles.open_table(db, table))


@st.cache_data(max_entries=TIMELINE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def timeline(db: str, table: str, version: int, tile_id: str, reference: str | None, max_cloud: float | None,
             max_nodata: float | None) -> pd.DataFrame:
    """:func:`rsclip.search.timeline.timeline` of a tile of a table version, cached."""
    return timelines.timeline(db, tile_id, table=table, reference=reference, max_cloud=max_cloud,
                              max_nodata=max_nodata)


@st.cache_data(max_entries=CHANGES_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def changes(db: str, table: str, version: int, date_a: str, date_b: str, k: int, bbox, polygon: str | None,
            max_cloud: float | None, max_nodata: float | None) -> pd.DataFrame:
    """:func:`rsclip.search.timeline.changes` of a table version (``polygon``: GeoJSON text), cached."""
    return timelines.changes(db, date_a, date_b, table=table, k=k, bbox=bbox, polygon=polygon, max_cloud=max_cloud,
                             max_nodata=max_nodata)


@st.cache_data(max_entries=FEATURE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def feature_match(data: bytes, name: str, text: str, model: str, grid, tile) -> FeatureMatch:
    """:func:`rsclip.app.web.data.finder.find_feature`, cached."""
    return find_feature(data, name, text, model=model, grid=grid, tile=tile)


@st.cache_data(max_entries=PREVIEW_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def preview(uri: str, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The tile's preview for a result card, at most ``PREVIEW_SIZE`` a side."""
    return read_preview(uri, Window(x, y, width, height), PREVIEW_SIZE)


@st.cache_data(max_entries=PANEL_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def panel_preview(uri: str, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The large preview of a tile opened on the map, at most :data:`PANEL_PREVIEW_SIZE` a side."""
    return read_preview(uri, Window(x, y, width, height), PANEL_PREVIEW_SIZE)


@st.cache_data(max_entries=THUMBNAIL_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def map_thumbnail(uri: str, window: tuple, bounds: tuple) -> dict | None:
    """``{"thumb", "thumb_size", "corners"}`` of a tile for the map (see :mod:`rsclip.app.web.data.mapdata`): its
    preview as a small JPEG data URI, placed at the raster window's corners (the bound box's for chips);
    None when the tile has no place or no readable preview."""
    try:
        corners = window_corners(uri, Window(*window))
    except Exception:  # an unreadable or unreachable source: the bound box places its (missing) thumbnail
        corners = None
    corners = corners or mapdata.bounds_corners(dict(zip(tiles.BOUNDS_COLUMNS, bounds)))
    if corners is None:
        return None
    try:
        pixels = preview(uri, *window)
    except Exception:  # a moved or unreadable source: its footprint is still drawn
        return None
    thumb, size = mapdata.thumbnail_uri(pixels)
    return {"thumb": thumb, "thumb_size": size, "corners": corners}


@st.cache_data(max_entries=FOOTPRINT_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def footprint_wkb(db: str, table: str, ids: tuple, bounds: tuple) -> list:
    """WKB footprints (None where unknown) of tiles ``ids`` of ``table`` with their bound tuples."""
    frame = pd.DataFrame([dict(zip(tiles.BOUNDS_COLUMNS, b), **{tiles.ID: i}) for i, b in zip(ids, bounds)])
    shapes = mapdata.footprints_of(frame, tiles.open_table(db, table))
    return [None if s is None else s.wkb for s in shapes]


def tile_bounds(row) -> tuple:
    """A row's four bound values as a tuple of floats (NaN where missing): a cache key part."""
    return tuple(float(row[c]) if row[c] is not None and pd.notna(row[c]) else float("nan")
                 for c in tiles.BOUNDS_COLUMNS)
