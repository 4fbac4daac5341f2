"""Detection review: the detections of a label set above a score, under the shared filters, best first.

The spatial filters (``bbox``, ``near``, ``polygon``) prefilter ``<table>_detections`` on its bound columns
and then test each detection's tile exactly, as a query does; ``where`` is SQL on the *tile table's*
columns (``uri``, ``crs``, ...) and applies to the tiles the detections name. Rows carry the tile's uri,
window and CRS (looked up by id), so they export as they are (:mod:`rsclip.search.export`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rsclip.table import datasets, detections, labels, rows, tiles
from rsclip.errors import LimitExceeded, NotFound
from rsclip.search.filters import Filters, validate_share
from rsclip.search.request import Request
from rsclip.search.searchers import SCORE, checked_sql

# Most detections one review returns (an export of more wants a higher --min-score or a smaller area).
MAX_REVIEW_ROWS = 1_000_000
# Optional tile columns carried along when the table has them.
DATETIME = tiles.DATETIME
TILE_COLUMNS = (tiles.URI, *tiles.WINDOW_COLUMNS, tiles.CRS, *tiles.TIME_COLUMNS, tiles.FOOTPRINT)
# Above this many detections their tiles are read by one filtered scan of the tile table rather than by id.
SCAN_ABOVE = 20_000
# The stored float32 score may round the float64 sigmoid(logit) that --min-score is tested on by this much.
SCORE_MARGIN = 1e-6


def detections_sql(rows_sql: str, min_score: float | None, filters: Filters) -> str:
    """SQL on the detections table: ``rows_sql`` (the label's rows readers see,
    :func:`rsclip.table.detections.label_rows`), the score threshold and the spatial prefilters."""
    spatial = filters.spatial().sql()
    parts = [rows_sql]
    if min_score is not None:
        parts.append(f"{detections.SCORE} >= {float(min_score) - SCORE_MARGIN!r}")  # float32; exact test later
    if spatial:
        parts.append(f"({spatial})")
    return " AND ".join(parts)


def validate_min_score(min_score) -> float | None:
    """``min_score`` as a float in [0, 1] (detection scores are probabilities), or None."""
    return validate_share(min_score, "min score", 1.0)


def review_detections(db, label: str, *, min_score: float | None = None, table: str = tiles.DEFAULT_TABLE,
                      bbox=None, near=None, polygon=None, where=None, date=None, max_cloud=None,
                      max_nodata=None, limit: int = MAX_REVIEW_ROWS) -> pd.DataFrame:
    """Detections of ``label`` scoring at least ``min_score`` under the filters, best first (highest logit).

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        label: The label set whose detections to review (scored by ``jobs/detect.py``).
        min_score: The lowest detection score kept, in [0, 1] (None: all).
        table: The tile table the detections are of.
        bbox: As for :func:`rsclip.query`, tested on each detection's tile.
        near: As for :func:`rsclip.query`, tested on each detection's tile.
        polygon: As for :func:`rsclip.query`, tested on each detection's tile.
        where: SQL on the tile table's columns (``uri``, ``crs``, ...), applied to the tiles the detections name.
        date: As for :func:`rsclip.query`.
        max_cloud: As for :func:`rsclip.query`.
        max_nodata: As for :func:`rsclip.query`.
        limit: The most detections returned.

    Returns:
        A DataFrame with columns id, uri, score (float64 ``sigmoid(logit)``), x, y, width, height, the bound
        columns, crs (and datetime and footprint when the tile table has them), label, model_version, logit;
        ordered by logit (a total order where stored float32 scores tie at 1.0), then id.

    Raises:
        NotFound: When the table has no detections of ``label``.
        LimitExceeded: When more than ``limit`` qualify.
        InvalidInput: For bad filters.
    """
    label = labels.validate_label(label)
    min_score = validate_min_score(min_score)
    request = Request.of(db, table, bbox=bbox, near=near, where=where, polygon=polygon, date=date,
                         max_cloud=max_cloud, max_nodata=max_nodata)
    tile_table, filters = request.table, request.filters
    shown = detections.label_rows(db, label, table)
    if shown is None:
        raise NotFound(f"no detections of {label!r} for table {table!r}: run jobs/detect.py --label {label} first")
    found, rows_sql = shown
    sql = detections_sql(rows_sql, min_score, filters)
    dataset = datasets.dataset_of(found)
    count = checked_sql(lambda: dataset.count_rows(filter=sql), sql)
    if count > limit:
        raise LimitExceeded(f"{count:,} detections qualify, more than {limit:,}: raise the minimum score or "
                            "narrow the area")
    columns = [tiles.ID, detections.SCORE, *tiles.BOUNDS_COLUMNS, detections.LABEL, detections.MODEL_VERSION]
    columns += [detections.LOGIT] if detections.LOGIT in found.schema.names else []
    frame = dataset.to_table(columns=columns, filter=sql).to_pandas()
    frame = frame.merge(tile_columns(tile_table, frame[tiles.ID], filters), on=tiles.ID, how="inner")
    frame = frame[filters.keep(frame, tile_table)].copy()
    frame[detections.LOGIT] = logits_of(frame)
    frame[SCORE] = 1.0 / (1.0 + np.exp(-frame[detections.LOGIT].to_numpy(dtype=np.float64)))
    frame = frame[frame[SCORE] >= min_score] if min_score is not None else frame
    order = [tiles.ID, tiles.URI, SCORE, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS]
    order += [c for c in (*tiles.TIME_COLUMNS, tiles.FOOTPRINT, detections.LABEL, detections.MODEL_VERSION,
                          detections.LOGIT) if c in frame.columns]
    frame = frame.sort_values([detections.LOGIT, tiles.ID], ascending=[False, True], kind="stable")
    return frame[order].reset_index(drop=True)


def logits_of(frame: pd.DataFrame) -> np.ndarray:
    """The stored logits of detection rows, float64; rows written before logits were stored (none, or
    null) get the logit of their float32 score (saturated scores stay tied, as they were stored)."""
    score = frame[detections.SCORE].to_numpy(dtype=np.float64)
    clipped = np.clip(score, np.finfo(np.float32).tiny, 1.0 - np.finfo(np.float32).epsneg)
    fallback = np.log(clipped) - np.log1p(-clipped)
    if detections.LOGIT not in frame.columns:
        return fallback
    stored = frame[detections.LOGIT].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(stored), fallback, stored)


def tile_columns(tile_table, ids: pd.Series, filters: Filters) -> pd.DataFrame:
    """:data:`TILE_COLUMNS` of the tiles ``ids`` that pass the filters on their attributes (``where``, time):
    looked up by id, or for many ids read by one scan under the filters' SQL (the spatial prefilter bounds
    it) and joined later."""
    if len(ids) <= SCAN_ABOVE:
        where = filters.attribute_sql()
        found = checked_sql(lambda: rows.rows_by_id(tile_table, ids, TILE_COLUMNS, where=where), where)
        return found.to_pandas()
    columns = [c for c in (tiles.ID, *TILE_COLUMNS) if rows.has_column(tile_table, c)]
    sql = filters.sql()
    return checked_sql(lambda: datasets.dataset_of(tile_table).to_table(columns=columns, filter=sql), sql).to_pandas()
