"""Export: search results, detections and labels as features a GIS opens (GeoJSON, GeoParquet 1.1, CSV).

Each feature is one tile: its geometry is the tile's true WGS84 footprint (the stored WKB of
:mod:`rsclip.geo.footprints`; the box of its bounds for tables written before footprints were stored; none
for tiles without georeference), its properties are ``id``, ``uri``, ``window`` (``"x,y,width,height"``
in source pixels), ``score``, ``crs``, ``datetime`` (ISO 8601, UTC), ``item_id``, ``cloud_cover`` and
``nodata_fraction`` when the table has them, and what the source adds
(``label`` and ``model_version`` for detections, ``label``, ``value``, ``note`` for labels).
:func:`dissolve` merges touching or overlapping footprints into one polygon each, with the ``score_max``,
``score_mean`` and number of ``tiles`` they hold.

One writer (:func:`write_features`) for every format, local or ``s3://``, atomic (a reader never sees half a
file, a failed export leaves nothing): GeoJSON (RFC 7946, lon/lat), GeoParquet 1.1 (WKB geometry, ``geo``
metadata with the CRS and a ``bbox`` covering column, as written by geopandas) and CSV (the geometry as
``WKT``, OGR's default geometry column; text cells a spreadsheet would run as a formula are neutralised by
:func:`csv_bytes`, the one CSV writer). Local files get the mode a plain ``open`` gives (``0o666`` less the
umask); a pipe, a device or ``/dev/stdout`` is written to as it is (``storage.write_bytes``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rsclip.runtime import storage
from rsclip.table import detections as detection_table, labels, rows, tiles
from rsclip.errors import InvalidInput
from rsclip.search.export_formats import export_format
from rsclip.search.review import DATETIME, review_detections
from rsclip.search.searchers import SCORE

WINDOW, GEOMETRY, WKT = "window", "geometry", "WKT"
CRS84 = "OGC:CRS84"  # WGS84 in lon/lat axis order: what GeoJSON and GeoParquet mean by default
GEOPARQUET_VERSION = "1.1.0"
PROPERTIES = (tiles.ID, tiles.URI, WINDOW, SCORE, tiles.CRS, DATETIME, tiles.ITEM_ID, tiles.CLOUD_COVER,
              tiles.NODATA_FRACTION, labels.LABEL, detection_table.MODEL_VERSION, labels.VALUE, labels.NOTE)
DISSOLVED = ("score_max", "score_mean", "tiles")
# OWASP's CSV injection rule: a cell starting with one of these is a formula to Excel, LibreOffice or Sheets
# (=HYPERLINK(...), +cmd|...); a leading ' makes it text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``rows`` features in ``format`` at ``path``."""

    path: str
    format: str
    rows: int


def features(frame: pd.DataFrame, table=None):
    """A GeoDataFrame (CRS84) of result rows: footprints as geometry, the export properties as columns.
    ``table`` is the tile table the rows come from (where footprints are looked up)."""
    import geopandas as gpd

    out = pd.DataFrame(index=range(len(frame)))
    for column in PROPERTIES:
        if column == WINDOW:
            out[WINDOW] = [f"{x},{y},{w},{h}" for x, y, w, h in frame[list(tiles.WINDOW_COLUMNS)].itertuples(
                index=False)] if len(frame) else []
        elif column == DATETIME and column in frame.columns:  # ISO 8601 text: every format and reader agrees
            when = pd.to_datetime(frame[column], utc=True)
            out[column] = [None if pd.isna(t) else t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in when]
        elif column in frame.columns:
            out[column] = frame[column].to_numpy()
    geometry = rows.tile_footprints(frame.reset_index(drop=True), table)
    return gpd.GeoDataFrame(out, geometry=gpd.GeoSeries(list(geometry), crs=CRS84), crs=CRS84)


def dissolve(gdf):
    """Touching or overlapping footprints merged: one feature per connected group, with ``score_max``,
    ``score_mean``, ``tiles`` (and ``label`` when every feature has the same). Features without geometry
    are left out."""
    import geopandas as gpd
    import shapely
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    gdf = gdf[~gdf.geometry.isna()].reset_index(drop=True)
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    n = len(geoms)
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects") if n else (np.zeros(0, int),) * 2
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    count, group = connected_components(graph, directed=False) if n else (0, np.zeros(0, int))
    scores = gdf[SCORE].to_numpy(dtype=np.float64) if SCORE in gdf.columns else np.full(n, np.nan)
    out = pd.DataFrame({
        "score_max": [float(np.max(scores[group == g])) for g in range(count)],
        "score_mean": [float(np.mean(scores[group == g])) for g in range(count)],
        "tiles": [int((group == g).sum()) for g in range(count)],
    })
    if labels.LABEL in gdf.columns and gdf[labels.LABEL].nunique() == 1:
        out.insert(0, labels.LABEL, gdf[labels.LABEL].iloc[0])
    merged = [shapely.union_all(geoms[group == g]) for g in range(count)]
    result = gpd.GeoDataFrame(out, geometry=gpd.GeoSeries(merged, crs=CRS84), crs=CRS84)
    return result.sort_values("score_max", ascending=False, kind="stable").reset_index(drop=True)


def encode(gdf, format: str) -> bytes:
    """The bytes of ``gdf`` in ``format`` (:data:`~rsclip.search.export_formats.FORMATS`)."""
    if format == "geojson":
        collection = gdf.to_geo_dict(na="null", drop_id=True)
        collection.pop("crs", None)  # RFC 7946: lon/lat WGS84 always, no crs member
        return json_bytes(collection)
    if format == "geoparquet":
        buffer = io.BytesIO()
        gdf.to_parquet(buffer, index=False, geometry_encoding="WKB", write_covering_bbox=True,
                       schema_version=GEOPARQUET_VERSION)
        return buffer.getvalue()
    frame = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
    frame[WKT] = [g.wkt if g is not None else "" for g in gdf.geometry.values]
    return csv_bytes(frame)


def json_bytes(obj) -> bytes:
    """``obj`` as JSON in UTF-8 bytes, every character as itself (values JSON does not know, such as timestamps,
    as text): what rsclip writes to files and answers over HTTP. Escaped as ``\\u`` surrogate pairs, some
    characters beyond the Basic Multilingual Plane come back from GDAL (QGIS's reader) as U+FFFD (U+1D800 did,
    U+1F600 did not: GDAL 3.12)."""
    return json.dumps(obj, default=str, ensure_ascii=False).encode("utf-8")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as UTF-8 CSV, every text cell that starts with one of :data:`FORMULA_STARTS` prefixed with
    ``'`` (table contents are outside input: an id, a uri or a note must open as text, never run). Lines end
    in CRLF (RFC 4180), so a cell holding a lone CR is quoted too instead of splitting its row."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
                            for v in safe[column]]
    return safe.to_csv(index=False, lineterminator="\r\n").encode("utf-8")


def write_features(gdf, out: str, format: str | None = None) -> ExportResult:
    """Write ``gdf`` to ``out`` (local path or ``s3://``) in ``format`` (default: from the suffix), atomically.

    Raises ``InvalidInput`` for an empty ``gdf`` (nothing is written), an unknown format and a path that
    cannot be written (``storage.write_bytes``: nothing is left behind).
    """
    format = export_format(out, format)
    require_features(gdf, str(out))
    storage.write_bytes(str(out), encode(gdf, format))
    return ExportResult(str(out), format, len(gdf))


def require_features(gdf, target: str = "") -> None:
    """Refuse an export of no feature, naming where it was to go (``target``) when given."""
    if len(gdf) == 0:
        raise InvalidInput(f"nothing to export{f' to {target}' if target else ''}: no tile matched")


def select(db, *, query=None, positive=None, negative=None, detections: str | None = None,
           min_score: float | None = None, k: int = 100, table: str = tiles.DEFAULT_TABLE, bbox=None, near=None,
           polygon=None, where=None, date=None, max_cloud=None, max_nodata=None,
           resident: bool = False) -> pd.DataFrame:
    """The rows an export writes: a query (text, image or vector), an example search (``positive`` /
    ``negative``) or the ``detections`` of a label set at ``min_score``, under the filters (a search through
    the resident copy when ``resident``, as :func:`rsclip.query`). Raises ``InvalidInput`` unless exactly one
    source is given."""
    from rsclip.search.query import query as run_query

    given = [query is not None, positive is not None or negative is not None, detections is not None]
    if sum(given) != 1:
        raise InvalidInput("export one of: a query, positive/negative examples, or the detections of a label")
    filters = dict(table=table, bbox=bbox, near=near, polygon=polygon, where=where, date=date, max_cloud=max_cloud,
                   max_nodata=max_nodata)
    if detections is not None:
        return review_detections(db, detections, min_score=min_score, **filters)
    if min_score is not None:
        raise InvalidInput("min score applies to detections only")
    return run_query(db, query, k, positive=positive, negative=negative, resident=resident, **filters)


def export_frame(db, *, dissolved: bool = False, table: str = tiles.DEFAULT_TABLE, **selection):
    """The GeoDataFrame an :func:`export` writes.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        dissolved: Merge touching or overlapping footprints (:func:`dissolve`).
        table: The name of the tile table.
        **selection: The keywords of :func:`select`: what to export and under which filters.

    Returns:
        A GeoDataFrame (CRS84): one feature per tile (footprint and :data:`PROPERTIES`), or per dissolved group.

    Raises:
        InvalidInput: For bad input (as :func:`select`), and for a dissolve of tiles none of which has a footprint.
    """
    return frame_features(db, select(db, table=table, **selection), dissolved=dissolved, table=table)


def frame_features(db, frame: pd.DataFrame, *, dissolved: bool = False, table: str = tiles.DEFAULT_TABLE):
    """The features of ``frame`` (rows of :func:`select`): one per tile, or per dissolved group when
    ``dissolved`` (``InvalidInput`` when none of the tiles has a footprint)."""
    gdf = features(frame, tiles.open_table(db, table))
    if not dissolved:
        return gdf
    merged = dissolve(gdf)
    if len(gdf) and not len(merged):  # else write_features would say "no tile matched"
        raise InvalidInput(f"nothing to dissolve: none of the {len(gdf)} matched tiles has a footprint (chips "
                           "without georeference); export them without dissolving")
    return merged


def export(db, out: str, *, format: str | None = None, dissolved: bool = False,
           table: str = tiles.DEFAULT_TABLE, **selection) -> ExportResult:
    """Export the tiles of a query, an example search or a label's detections to ``out`` (GeoJSON, GeoParquet
    or CSV).

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        out: Where to write: a local path or ``s3://`` URI.
        format: One of :data:`~rsclip.search.export_formats.FORMATS` (None: from the suffix of ``out``).
        dissolved: Merge touching footprints (:func:`dissolve`).
        table: The name of the tile table.
        **selection: The keywords of :func:`select`: what to export and under which filters.

    Returns:
        An :class:`ExportResult`: the path, format and number of features written.

    Raises:
        InvalidInput: For bad input, an empty result or an unwritable ``out`` (nothing is written then).
    """
    format = export_format(out, format)
    return write_features(export_frame(db, dissolved=dissolved, table=table, **selection), out, format)


def export_labels(db, label: str, out: str, *, format: str | None = None,
                  table: str = tiles.DEFAULT_TABLE) -> ExportResult:
    """Export the tiles of label set ``label`` with their ``value`` (+1/-1) and ``note``.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        label: The label set.
        out: Where to write: a local path or ``s3://`` URI.
        format: One of :data:`~rsclip.search.export_formats.FORMATS` (None: from the suffix of ``out``).
        table: The name of the tile table.

    Returns:
        An :class:`ExportResult`: the path, format and number of features written.

    Raises:
        NotFound: For an unknown label set.
        InvalidInput: For an unknown format or an unwritable ``out``.
    """
    format = export_format(out, format)
    return write_features(label_features(db, label, table=table), out, format)


def label_features(db, label: str, *, table: str = tiles.DEFAULT_TABLE):
    """The GeoDataFrame (CRS84) of label set ``label``: one feature per labelled tile still in the table, with
    its ``value`` (+1/-1) and ``note``. Raises ``NotFound`` for an unknown label set."""
    frame = labels.read_labels(db, label, table=table)
    tile_table = tiles.open_table(db, table)
    columns = (tiles.URI, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS, *tiles.TIME_COLUMNS)
    found = rows.rows_by_id(tile_table, frame[tiles.ID], columns).to_pandas()
    return features(frame.merge(found, on=tiles.ID, how="inner"), tile_table)
