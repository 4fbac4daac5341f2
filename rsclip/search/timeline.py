"""Same place, other dates: the timeline of one place, and the places whose embedding moved between two dates.

Places are matched by footprint (:mod:`rsclip.geo.footprints`: the stored WGS84 outline, the box of the bound
columns in older tables). Scenes of one pixel grid (same CRS and resolution) are cut on windows anchored to
the CRS (:func:`rsclip.geo.raster.grid_origin`), so a place is the same window on every date: its tiles'
footprints coincide (scenes whose corners are off the grid by a fraction of a pixel snap to the nearest
pixel: footprints then differ by that fraction). Scenes of other grids (another CRS, resolution or pixel
phase) have windows that do not line up: :func:`timeline` still returns every tile containing the point, and
:func:`changes` pairs each tile with the other date's tile it overlaps most, when their intersection is at
least ``min_overlap`` of their union (reported as ``overlap``); tiles overlapping less are not compared.

- :func:`timeline`: the tiles whose footprint contains a point (or a tile's centre), ordered by date
  (unknown dates last), each with its cosine ``similarity`` to a reference tile: the first date's, or the
  tile of a chosen date or id.
- :func:`changes`: tiles of date (range) A in an area, one per place (the latest, the one closest in time
  to B), each paired with the tile of date (range) B it overlaps most (the earliest among equals) and
  ranked by ``change = 1 - similarity``, largest first.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from rsclip.geo import dates
from rsclip.table import datasets, rows, tiles
from rsclip.errors import InvalidInput, LimitExceeded, NotFound
from rsclip.search.filters import Filters, bbox_sql, join_sql
from rsclip.search.near import finite_numbers
from rsclip.search.request import Request
from rsclip.search.searchers import SCORE, checked_sql

# Most tiles one timeline, or one side of a comparison, loads (vectors included: ~2 KB each at 512-d).
MAX_TILES = 200_000
MIN_OVERLAP = 0.5
SIMILARITY, CHANGE, OVERLAP = "similarity", "change", "overlap"
TILE_COLUMNS = (tiles.ID, tiles.URI, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS, *tiles.TIME_COLUMNS)
B_COLUMNS = (tiles.ID, tiles.URI, tiles.DATETIME)


def point_sql(lon: float, lat: float) -> str:
    """SQL keeping tiles whose bounds contain ``(lon, lat)``, those wrapping across the antimeridian too."""
    wrapped = (f"({tiles.LON_MIN} > {tiles.LON_MAX} AND {tiles.LAT_MIN} <= {lat!r} AND {tiles.LAT_MAX} >= {lat!r} "
               f"AND ({tiles.LON_MIN} <= {lon!r} OR {tiles.LON_MAX} >= {lon!r}))")
    return f"({bbox_sql((lon, lat, lon, lat))} OR {wrapped})"


def load_tiles(table, where: str | None, limit: int = MAX_TILES) -> pd.DataFrame:
    """The rows of ``table`` passing ``where``: :data:`TILE_COLUMNS` it has, footprint and vector. Raises
    ``LimitExceeded`` above ``limit`` rows."""
    dataset = datasets.dataset_of(table)
    count = checked_sql(lambda: dataset.count_rows(filter=where), where)
    if count > limit:
        raise LimitExceeded(f"{count:,} tiles qualify, more than {limit:,}: narrow the area or the dates")
    columns = [c for c in (*TILE_COLUMNS, tiles.FOOTPRINT, tiles.VECTOR) if rows.has_column(table, c)]
    frame = checked_sql(lambda: dataset.to_table(columns=columns, filter=where), where).to_pandas()
    for column in TILE_COLUMNS:
        if column not in frame.columns:  # a table written before the column existed: unknown
            frame[column] = pd.Series([None] * len(frame), dtype="datetime64[us, UTC]" if column == tiles.DATETIME
                                      else object)
    return frame


def unit_vectors(frame: pd.DataFrame) -> np.ndarray:
    """The ``vector`` column of ``frame`` as unit rows ``(n, D)`` float32."""
    if len(frame) == 0:
        return np.zeros((0, 0), np.float32)
    vectors = np.stack(frame[tiles.VECTOR].to_numpy()).astype(np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def place_point(table, place) -> tuple[float, float]:
    """``(lon, lat)`` of ``place``: a ``(lon, lat)`` pair, or a tile id (its footprint's centre). Raises
    ``InvalidInput`` for a bad pair or a tile without georeference, ``NotFound`` for an unknown tile."""
    if rows.is_tile_id(place):
        found = rows.rows_by_id(table, [place], [*tiles.BOUNDS_COLUMNS, tiles.FOOTPRINT]).to_pandas()
        if found.empty:
            raise NotFound(f"tile {place} is not in table {table.name!r}")
        outline = rows.tile_footprints(found, table)[0]
        if outline is None:
            raise InvalidInput(f"tile {place} has no georeference: it has no place to follow across dates")
        point = outline.centroid if outline.contains(outline.centroid) else outline.representative_point()
        return float(point.x), float(point.y)
    if isinstance(place, str):
        raise InvalidInput(f"a place is a tile id (32 hex characters) or (lon, lat), got {place[:80]!r}")
    lon, lat = finite_numbers(place, 2, "place", "lon, lat")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise InvalidInput(f"place ({lon}, {lat}) is outside lon [-180, 180], lat [-90, 90]")
    return lon, lat


def by_date(frame: pd.DataFrame, newest_first: bool = False) -> pd.DataFrame:
    """``frame`` ordered by ``datetime`` (unknown last), then id."""
    return frame.sort_values([tiles.DATETIME, tiles.ID], ascending=[not newest_first, True],
                             na_position="last", kind="stable").reset_index(drop=True)


def reference_row(frame: pd.DataFrame, reference) -> int:
    """The row of ``frame`` (ordered by date) that similarities are measured to: the first (None), the tile
    with id ``reference``, or the tile nearest in time to the date ``reference``."""
    if reference is None:
        return 0
    if rows.is_tile_id(reference):
        at = np.flatnonzero(frame[tiles.ID].to_numpy() == reference)
        if not len(at):
            raise NotFound(f"reference tile {reference} is not among the tiles covering the place")
        return int(at[0])
    wanted = pd.Timestamp(dates.parse_instant(reference))
    gaps = (frame[tiles.DATETIME] - wanted).abs()
    if gaps.isna().all():
        raise InvalidInput("no tile covering the place has a known date to compare with the reference date")
    return int(gaps.idxmin())  # frame has a 0..n-1 index (by_date); unknown dates are skipped


def timeline(db, place, *, table: str = tiles.DEFAULT_TABLE, reference=None, date=None, max_cloud=None,
             max_nodata=None) -> pd.DataFrame:
    """The tiles covering ``place`` ordered by date, each with its cosine ``similarity`` to a reference tile.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        place: ``(lon, lat)``, or a tile id (its footprint's centre).
        table: The name of the tile table.
        reference: The tile similarities are measured to: None for the first date's, a tile id, or a date
            whose nearest tile is used.
        date: Filters as in :func:`rsclip.query`.
        max_cloud: Filters as in :func:`rsclip.query`.
        max_nodata: Filters as in :func:`rsclip.query`.

    Returns:
        A DataFrame with columns id, uri, datetime, item_id, cloud_cover, nodata_fraction, similarity, x, y,
        width, height, the bound columns, crs; unknown dates last.

    Raises:
        InvalidInput: For a bad place or filter.
        NotFound: For an unknown table or tile.
        LimitExceeded: When more than :data:`MAX_TILES` tiles qualify.
    """
    request = Request.of(db, table, date=date, max_cloud=max_cloud, max_nodata=max_nodata)
    tbl = request.table
    lon, lat = place_point(tbl, place)
    frame = load_tiles(tbl, join_sql(point_sql(lon, lat), request.filters.attribute_sql()))
    outlines = rows.tile_footprints(frame, tbl)
    from shapely.geometry import Point

    point = Point(lon, lat)
    frame = by_date(frame[np.array([g is not None and g.covers(point) for g in outlines], dtype=bool)])
    vectors = unit_vectors(frame)
    frame[SIMILARITY] = (vectors @ vectors[reference_row(frame, reference)]).astype(np.float64) if len(frame) else []
    order = [tiles.ID, tiles.URI, tiles.DATETIME, tiles.ITEM_ID, tiles.CLOUD_COVER, tiles.NODATA_FRACTION,
             SIMILARITY, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS]
    return frame[order]


def _side(tbl, span: dates.DateRange, filters: Filters, newest_first: bool):
    """Tiles of one date range under the area ``filters``, ordered so the preferred tile of a place comes
    first, with their footprints (tiles without one dropped)."""
    chosen = dataclasses.replace(filters, date=span).on(tbl)
    frame = load_tiles(tbl, chosen.sql())
    frame = by_date(frame[chosen.keep(frame, tbl)], newest_first)
    outlines = rows.tile_footprints(frame, tbl)
    known = np.array([g is not None for g in outlines], dtype=bool)
    return frame[known].reset_index(drop=True), np.asarray(outlines[known], dtype=object)


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of the geometries ``a[i]`` and ``b[i]``."""
    import shapely

    union = shapely.area(shapely.union(a, b))
    return np.where(union > 0, shapely.area(shapely.intersection(a, b)) / np.where(union > 0, union, 1), 0.0)


def one_per_place(outlines: np.ndarray, min_overlap: float) -> np.ndarray:
    """Indexes of the tiles kept, one per place: in order, a tile overlapping (:func:`overlaps`) a kept one by
    at least ``min_overlap`` is another view of its place and left out."""
    import shapely

    tree, taken, kept = shapely.STRtree(outlines), np.zeros(len(outlines), bool), []
    for i in range(len(outlines)):
        if taken[i]:
            continue
        kept.append(i)
        near = tree.query(outlines[i], predicate="intersects")
        taken[near[overlaps(np.full(len(near), outlines[i], dtype=object), outlines[near]) >= min_overlap]] = True
    return np.asarray(kept, dtype=np.int64)


def pair_places(a: np.ndarray, b: np.ndarray, min_overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, overlap)``: for each footprint ``a[i]``, the ``b[j]`` it overlaps most (the first in ``b``'s
    order among equals), when by at least ``min_overlap``."""
    import shapely

    if not len(a) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    left, right = shapely.STRtree(b).query(a, predicate="intersects")
    iou = overlaps(a[left], b[right])
    pairs = pd.DataFrame({"i": left, "j": right, "o": iou})
    pairs = pairs[pairs["o"] >= min_overlap].sort_values(["i", "o", "j"], ascending=[True, False, True])
    best = pairs.drop_duplicates("i", keep="first")
    return best["i"].to_numpy(np.int64), best["j"].to_numpy(np.int64), best["o"].to_numpy(np.float64)


def changes(db, date_a, date_b, *, table: str = tiles.DEFAULT_TABLE, bbox: Sequence[float] | None = None,
            polygon=None, near=None, k: int | None = 100, max_cloud=None, max_nodata=None,
            min_overlap: float = MIN_OVERLAP) -> pd.DataFrame:
    """The places in an area ranked by how much their embedding moved between ``date_a`` and ``date_b``.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        date_a: The first date: a day, month, year or range (see the module).
        date_b: The second date, as ``date_a``.
        table: The name of the tile table.
        bbox: The area, as in :func:`rsclip.query` (no area: everywhere).
        polygon: The area, as in :func:`rsclip.query`.
        near: The area, as in :func:`rsclip.query`.
        k: How many places to return, largest change first (None: all).
        max_cloud: Filters as in :func:`rsclip.query`.
        max_nodata: Filters as in :func:`rsclip.query`.
        min_overlap: The least intersection over union of two tiles compared as one place, in (0, 1].

    Returns:
        A DataFrame of A's tiles (id, uri, window, bounds, crs, datetime, ...) with ``id_b``, ``uri_b``,
        ``datetime_b``, ``similarity`` (cosine), ``change`` = 1 - similarity (also as ``score``, so the rows
        export as they are) and ``overlap``; largest change first.

    Raises:
        InvalidInput: For bad dates, filters or ``min_overlap``.
        LimitExceeded: When a date has more than :data:`MAX_TILES` tiles in the area.
    """
    if not 0.0 < float(min_overlap) <= 1.0:
        raise InvalidInput(f"min_overlap must be in (0, 1], got {min_overlap}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise InvalidInput(f"k must be a positive integer or None, got {k!r}")
    span_a, span_b = dates.parse_range(date_a), dates.parse_range(date_b)
    request = Request.of(db, table, bbox=bbox, polygon=polygon, near=near, max_cloud=max_cloud, max_nodata=max_nodata)
    tbl, area = request.table, request.filters
    frame_a, outline_a = _side(tbl, span_a, area, newest_first=True)
    frame_b, outline_b = _side(tbl, span_b, area, newest_first=False)
    keep = one_per_place(outline_a, min_overlap)
    i, j, overlap = pair_places(outline_a[keep], outline_b, min_overlap)
    first, second = frame_a.iloc[keep[i]].reset_index(drop=True), frame_b.iloc[j].reset_index(drop=True)
    similarity = np.einsum("nd,nd->n", unit_vectors(first), unit_vectors(second)) if len(first) else np.zeros(0)
    out = first[list(TILE_COLUMNS)].copy()
    for column in B_COLUMNS:
        out[f"{column}_b"] = second[column].to_numpy()
    out[SIMILARITY] = similarity.astype(np.float64)
    out[CHANGE] = out[SCORE] = 1.0 - out[SIMILARITY]
    out[OVERLAP] = overlap
    out = out.sort_values([CHANGE, tiles.ID], ascending=[False, True], kind="stable").reset_index(drop=True)
    return out if k is None else out.head(int(k))
