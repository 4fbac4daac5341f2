"""Detections: the scores a detection job (:mod:`rsclip.detect`) gave every tile for one label set.

``<table>_detections`` holds one row per (label, tile), whatever the number of runs:

=================================  ==================  ==============================================
column                             type                meaning
=================================  ==================  ==============================================
``key``                            string              ``<label>:<tile id>``: the upsert key
``id``                             string              the tile's id
``label``                          string              the label set the probe was trained on
``model_version``                  string              :func:`rsclip.detect.probe.model_version` of the
                                                       probe (labels, settings, the table's model)
``score``                          float32             the probe's probability that the tile is positive
``logit``                          float64, nullable   the probe's logit (``score = sigmoid(logit)``): a total
                                                       order where float32 probabilities saturate at 1.0
                                                       (null in rows written before it was stored)
``lon_min, lat_min, lon_max,``     float64, nullable   the tile's WGS84 bounds (for spatial prefilters)
``lat_max``
``time``                           timestamp[us, UTC]  when the row was written
=================================  ==================  ==============================================

Rows are upserted on ``key`` (a new model version replaces the old score), so a job killed and rerun never
leaves two rows for a tile and label. ``<table>_detections_progress`` records which parts of the tile table
(fragment ranges, :mod:`rsclip.detect.scoring`) a model version has committed, so a rerun resumes after
them; a part is recorded only after its rows are committed. A detections table written before ``logit``
was stored gains the column (all null) when a job next writes to it (:func:`open_detections` with ``create``).
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from rsclip.table import datasets, keyed_writes, rows, tiles

DETECTIONS_SUFFIX = "_detections"
PROGRESS_SUFFIX = "_detections_progress"
KEY, LABEL, MODEL_VERSION, SCORE, LOGIT, TIME = "key", "label", "model_version", "score", "logit", "time"
PART, ROWS = "part", "rows"
DETECTION_COLUMNS = (KEY, tiles.ID, LABEL, MODEL_VERSION, SCORE, LOGIT, *tiles.BOUNDS_COLUMNS, TIME)
DETECTIONS_SCHEMA = pa.schema([
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(tiles.ID, pa.string(), nullable=False),
    pa.field(LABEL, pa.string(), nullable=False),
    pa.field(MODEL_VERSION, pa.string(), nullable=False),
    pa.field(SCORE, pa.float32(), nullable=False),
    pa.field(LOGIT, pa.float64()),
    *(pa.field(c, pa.float64()) for c in tiles.BOUNDS_COLUMNS),
    pa.field(TIME, pa.timestamp("us", tz="UTC"), nullable=False),
])
PROGRESS_SCHEMA = pa.schema([
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(LABEL, pa.string(), nullable=False),
    pa.field(MODEL_VERSION, pa.string(), nullable=False),
    pa.field(PART, pa.string(), nullable=False),
    pa.field(ROWS, pa.int64(), nullable=False),
    pa.field(TIME, pa.timestamp("us", tz="UTC"), nullable=False),
])


def detections_table_name(table: str) -> str:
    """The detections table of tile table ``table``."""
    return f"{table}{DETECTIONS_SUFFIX}"


def progress_table_name(table: str) -> str:
    """The progress table of the detection jobs on tile table ``table``."""
    return f"{table}{PROGRESS_SUFFIX}"


def detection_key(label: str, tile_id: str) -> str:
    """The upsert key of a detection (and of a label: one per label set and tile)."""
    return f"{label}:{tile_id}"


def open_detections(db, table: str = tiles.DEFAULT_TABLE, *, create: bool = False):
    """The detections table of ``table`` (created when ``create``; else None when there is none). With
    ``create``, a table written by an older rsclip gains the nullable columns it lacks (all null)."""
    found = rows.open_companion(db, detections_table_name(table), DETECTIONS_SCHEMA, create=create)
    if create and found is not None:
        missing = [f for f in DETECTIONS_SCHEMA if f.nullable and f.name not in found.schema.names]
        if missing:
            found.add_columns(missing)
    return found


def open_progress(db, table: str = tiles.DEFAULT_TABLE, *, create: bool = False):
    """The progress table of ``table``'s detection jobs (created when ``create``; else None)."""
    return rows.open_companion(db, progress_table_name(table), PROGRESS_SCHEMA, create=create)


def upsert(target, batch: pa.Table) -> None:
    """Write ``batch`` into ``target`` keyed on ``key`` (replace or insert) as one atomic commit."""
    keyed_writes.merge_on(target, KEY, batch)


def done_parts(progress, label: str, model_version: str) -> set[str]:
    """The parts that ``model_version`` of ``label`` has committed (per the progress table)."""
    if progress is None:
        return set()
    where = f"{LABEL} = {tiles.sql_text(label)} AND {MODEL_VERSION} = {tiles.sql_text(model_version)}"
    found = datasets.dataset_of(progress).to_table(columns=[PART], filter=where)
    return set(found.column(PART).to_pylist())


def record_part(progress, label: str, model_version: str, part: str, rows: int) -> None:
    """Record that ``part`` (``rows`` detections) of ``model_version`` of ``label`` is committed."""
    now = dt.datetime.now(dt.timezone.utc)
    upsert(progress, pa.Table.from_pydict({
        KEY: [f"{label}:{model_version}:{part}"], LABEL: [label], MODEL_VERSION: [model_version], PART: [part],
        ROWS: [int(rows)], TIME: [now]}, schema=PROGRESS_SCHEMA))


def drop_other_versions(db, table: str, label: str, model_version: str) -> int:
    """Delete ``label``'s detections and progress of versions other than ``model_version`` (tiles the current
    version did not score are gone from the tile table); returns the detections deleted."""
    where = f"{LABEL} = {tiles.sql_text(label)} AND {MODEL_VERSION} <> {tiles.sql_text(model_version)}"
    removed = 0
    for target in (open_detections(db, table), open_progress(db, table)):
        if target is None:
            continue
        count = target.count_rows(where)
        if count:
            keyed_writes.retry_on_conflict(lambda t=target: t.delete(where), target)
        if target.name == detections_table_name(table):
            removed = count
    return removed
