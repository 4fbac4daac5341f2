"""Detections: the scores a detection job (:mod:`rsclip.detect`) gave every tile for one label set.

``<table>_detections`` holds one row per (label, model version, tile), whatever the number of runs:

=================================  ==================  ==============================================
column                             type                meaning
=================================  ==================  ==============================================
``key``                            string              ``<label>:<tile id>``
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
``part``                           string, nullable    the part of the tile table (:mod:`rsclip.detect.scoring`)
                                                       whose scoring wrote the row (null in rows written
                                                       before it was stored, or not by the job:
                                                       :data:`DETECTIONS_SCHEMA` is a row without it)
=================================  ==================  ==============================================

The detection job appends each part's rows (Lance fragments its workers write, committed by its driver in
few large commits: :mod:`rsclip.table.fragments`). ``<table>_detections_progress`` records which parts a
model version has committed, after their commit, so a rerun resumes after them; a run that scored every part
records a row with part :data:`COMPLETE`, then deletes the label's rows and progress of other versions. So
that a tile and label has one row whatever was killed when, a run first deletes the rows of its model version
whose part is not recorded (committed by a run killed before it recorded them: :func:`settle`). While a new
version is being scored, a label's rows of two versions are stored side by side: readers see one
(:func:`shown_version`, through :func:`label_rows`). A detections table written before ``logit`` or ``part``
was stored gains the column (all null) when a job next writes to it (:func:`open_detections` with ``create``).
"""

from __future__ import annotations

import datetime as dt
import logging

import pyarrow as pa
import pyarrow.compute as pc

from rsclip.table import datasets, keyed_writes, rows, tiles

log = logging.getLogger(__name__)

DETECTIONS_SUFFIX = "_detections"
PROGRESS_SUFFIX = "_detections_progress"
KEY, LABEL, MODEL_VERSION, SCORE, LOGIT, TIME = "key", "label", "model_version", "score", "logit", "time"
PART, ROWS = "part", "rows"
COMPLETE = "*complete*"  # the part of the progress row saying that a model version scored every part
DETECTION_COLUMNS = (KEY, tiles.ID, LABEL, MODEL_VERSION, SCORE, LOGIT, *tiles.BOUNDS_COLUMNS, TIME)
# Parts named in one delete (bounds the SQL text of one statement).
PARTS_PER_DELETE = 500
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
# What the table stores: a detection row and the part whose scoring wrote it (null: written otherwise).
STORED_SCHEMA = DETECTIONS_SCHEMA.append(pa.field(PART, pa.string()))
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
    found = rows.open_companion(db, detections_table_name(table), STORED_SCHEMA, create=create)
    if create and found is not None:
        missing = [f for f in STORED_SCHEMA if f.nullable and f.name not in found.schema.names]
        if missing:
            found.add_columns(missing)
    return found


def open_progress(db, table: str = tiles.DEFAULT_TABLE, *, create: bool = False):
    """The progress table of ``table``'s detection jobs (created when ``create``; else None)."""
    return rows.open_companion(db, progress_table_name(table), PROGRESS_SCHEMA, create=create)


def detected_labels(db, table: str = tiles.DEFAULT_TABLE) -> list[str]:
    """The labels whose detections the job has committed for ``table`` (read from the small progress table),
    sorted."""
    progress = open_progress(db, table)
    if progress is None:
        return []
    column = datasets.dataset_of(progress).to_table(columns=[LABEL]).column(LABEL)
    return sorted(set(column.to_pylist()))


def upsert(target, batch: pa.Table) -> None:
    """Write ``batch`` into ``target`` keyed on ``key`` (replace or insert) as one atomic commit."""
    keyed_writes.merge_on(target, KEY, batch)


def version_sql(label: str, model_version: str) -> str:
    """SQL selecting the rows of ``model_version`` of ``label`` (in either table)."""
    return f"{LABEL} = {tiles.sql_text(label)} AND {MODEL_VERSION} = {tiles.sql_text(model_version)}"


def recorded_parts(progress, label: str, model_version: str) -> dict[str, int]:
    """The parts that ``model_version`` of ``label`` has committed (per the progress table): part -> rows."""
    if progress is None:
        return {}
    found = datasets.dataset_of(progress).to_table(columns=[PART, ROWS], filter=version_sql(label, model_version))
    return {p: int(n) for p, n in zip(found.column(PART).to_pylist(), found.column(ROWS).to_pylist())
            if p != COMPLETE}


def done_parts(progress, label: str, model_version: str) -> set[str]:
    """The parts that ``model_version`` of ``label`` has committed (per the progress table)."""
    return set(recorded_parts(progress, label, model_version))


def record_parts(progress, label: str, model_version: str, parts: dict[str, int]) -> None:
    """Record, in one commit, that ``parts`` (part -> detections) of ``model_version`` of ``label`` are
    committed."""
    if not parts:
        return
    now, names = dt.datetime.now(dt.timezone.utc), list(parts)
    upsert(progress, pa.Table.from_pydict({
        KEY: [f"{label}:{model_version}:{p}" for p in names], LABEL: [label] * len(names),
        MODEL_VERSION: [model_version] * len(names), PART: names, ROWS: [int(parts[p]) for p in names],
        TIME: [now] * len(names)}, schema=PROGRESS_SCHEMA))


def record_part(progress, label: str, model_version: str, part: str, rows: int) -> None:
    """Record that ``part`` (``rows`` detections) of ``model_version`` of ``label`` is committed."""
    record_parts(progress, label, model_version, {part: rows})


def record_complete(progress, label: str, model_version: str, rows: int) -> None:
    """Record that ``model_version`` of ``label`` has scored every part (``rows`` tiles): readers turn to it."""
    record_parts(progress, label, model_version, {COMPLETE: rows})


def _delete(target, where: str) -> None:
    keyed_writes.retry_on_conflict(lambda: target.delete(where), target)


def _delete_parts(target, where: str, parts) -> None:
    """Delete the rows under ``where`` whose part is one of ``parts`` (None: rows without a part)."""
    parts = sorted(p for p in parts if p is not None)
    for start in range(0, len(parts), PARTS_PER_DELETE):
        names = ", ".join(tiles.sql_text(p) for p in parts[start:start + PARTS_PER_DELETE])
        _delete(target, f"{where} AND {PART} IN ({names})")


def parts_held(target, where: str) -> set:
    """The distinct parts of the rows under ``where`` (None for rows without one); one scan, batch by batch."""
    found: set = set()
    for batch in datasets.dataset_of(target).to_batches(columns=[PART], filter=where):
        found.update(pc.unique(batch.column(0)).to_pylist())
    return found


def settle(target, progress, label: str, model_version: str, planned) -> set[str]:
    """Make ``target``'s rows of ``model_version`` of ``label`` those of the parts recorded in ``progress`` and in
    ``planned`` (the tile table's parts now) and return those parts, which a run need not score again.

    Rows counted against the records: equal, nothing is done. More: rows of parts committed but never recorded
    (a run killed between the two) or of parts no longer planned (the tile table's fragments rewritten since)
    are deleted, with the records of the latter. Rows without a part (written before it was stored), fewer
    rows than recorded, or counts still unequal after that: every row and record of the version is deleted and
    all its parts are scored again."""
    recorded, planned = recorded_parts(progress, label, model_version), set(planned)
    kept = {p: n for p, n in recorded.items() if p in planned}
    if target is None:
        return set()
    where = version_sql(label, model_version)
    held = target.count_rows(where)
    if held == sum(kept.values()):
        return set(kept)
    found = parts_held(target, where) if PART in target.schema.names else {None}
    if held > sum(kept.values()) and None not in found:
        _delete_parts(target, where, found - set(kept))
        held = target.count_rows(where)
    if held != sum(kept.values()):
        _delete(target, where)
        kept = {}
    log.warning("%s: deleted the detections of %s of %r not recorded as committed (a run killed between its "
                "commit and its record); %d parts kept", target.name, model_version, label, len(kept))
    if progress is not None:
        _delete_parts(progress, where, {*recorded, COMPLETE} - set(kept))
    return set(kept)


def drop_duplicates(target, label: str, model_version: str, parts) -> int:
    """Delete every row but the last written (the highest row id, which
    :func:`rsclip.table.keyed_writes.drop_duplicate_keys` keeps too) of each key among the rows of
    ``model_version`` of ``label`` in ``parts``: what two runs of one version scoring the same parts at once
    both committed. Scoped to the version (its rows and another version's share keys by design) and to the
    parts (a look-up of their keys across the table would cost seconds per commit). Returns the rows deleted."""
    names = ", ".join(tiles.sql_text(p) for p in sorted(parts))
    if not names:
        return 0
    where = f"{version_sql(label, model_version)} AND {PART} IN ({names})"
    return keyed_writes.drop_duplicate_keys(target, KEY, where=where)


def shown_version(found, progress, label: str) -> str | None:
    """The one model version of ``label`` whose detections readers see (``found``: the detections table).

    The newest version recorded complete; else (no run of the label has finished since completion was
    recorded) the version with the most rows recorded in ``progress``, the newest on a tie: the only one of a
    first run still going, or the complete version of an older rsclip rather than a new one being scored; else
    (no records: rows written by hand) the version with the most rows in ``found``, the newest on a tie.
    None when there are no detections of ``label``."""
    where = f"{LABEL} = {tiles.sql_text(label)}"
    if progress is not None:
        records = datasets.dataset_of(progress).to_table(columns=[MODEL_VERSION, PART, ROWS, TIME], filter=where)
        complete = records.filter(pc.equal(records.column(PART), COMPLETE))
        if complete.num_rows:
            return complete.sort_by([(TIME, "descending")]).column(MODEL_VERSION)[0].as_py()
        if records.num_rows:
            return _largest(records.group_by(MODEL_VERSION).aggregate([(ROWS, "sum"), (TIME, "max")]))
    if found is None:
        return None
    stats: dict[str, tuple] = {}
    for batch in datasets.dataset_of(found).to_batches(columns=[MODEL_VERSION, TIME], filter=where):
        groups = pa.Table.from_batches([batch]).group_by(MODEL_VERSION).aggregate([(TIME, "count"), (TIME, "max")])
        for version, count, time in zip(*(groups.column(c).to_pylist() for c in (MODEL_VERSION, f"{TIME}_count",
                                                                                   f"{TIME}_max"))):
            have = stats.get(version, (0, time))
            stats[version] = (have[0] + count, max(have[1], time))
    return max(stats, key=stats.__getitem__) if stats else None


def _largest(groups: pa.Table) -> str | None:
    """The model version of the group with the most rows recorded, the newest on a tie."""
    count, time, version = (groups.column(c).to_pylist() for c in (f"{ROWS}_sum", f"{TIME}_max", MODEL_VERSION))
    return max(zip(count, time, version))[2] if version else None


def label_rows(db, label: str, table: str = tiles.DEFAULT_TABLE):
    """``(detections table, SQL)``: the SQL selects the rows of ``label`` that readers see (one model version,
    :func:`shown_version`); None when the table holds no detections of ``label``. Every reader of detections
    goes through it."""
    found = open_detections(db, table)
    if found is None:
        return None
    version = shown_version(found, open_progress(db, table), label)
    if version is None:
        return None
    where = version_sql(label, version)
    return (found, where) if found.count_rows(where) else None


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
