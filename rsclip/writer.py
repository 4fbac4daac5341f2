"""The writer of the embedding job: embedded batches into the tile table, failures into ``<table>_errors``.

It runs in the driver on the batches the pipeline streams out (one batch in memory at a time). Tiles are
written with ``store.add_tiles`` (merge_insert on id: atomic per commit, never a duplicate), so a job killed
at any moment loses at most the tiles not yet committed and a rerun fills exactly those. Error rows are
keyed by (uri, stage, window) and upserted, so a rerun refreshes them instead of adding copies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rsclip import archive, store

log = logging.getLogger(__name__)

ERRORS_SUFFIX = "_errors"
ERROR_TIME = "time"
ERROR_COLUMNS = (store.ID, store.URI, archive.STAGE, archive.MESSAGE, *store.WINDOW_COLUMNS, ERROR_TIME)
ERRORS_SCHEMA = pa.schema([
    pa.field(store.ID, pa.string(), nullable=False),
    pa.field(store.URI, pa.string(), nullable=False),
    pa.field(archive.STAGE, pa.string(), nullable=False),
    pa.field(archive.MESSAGE, pa.string(), nullable=False),
    *(pa.field(c, pa.int32(), nullable=False) for c in store.WINDOW_COLUMNS),
    pa.field(ERROR_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
])


def errors_table_name(table: str) -> str:
    """The name of the errors table that goes with tile table ``table``."""
    return f"{table}{ERRORS_SUFFIX}"


def error_id(uri: str, stage: str, window) -> str:
    """Key of an error row: one row per (uri, stage, window) however often the job is rerun."""
    x, y, w, h = (int(v) for v in window)
    return hashlib.sha256(f"{uri}\x00{stage}\x00{x}\x00{y}\x00{w}\x00{h}".encode()).hexdigest()[:32]


def open_errors_table(db, table: str):
    """Open (creating when missing) the errors table of tile table ``table`` in ``db``."""
    conn = store.connect(db)
    name = errors_table_name(table)
    if name not in store.table_names(conn):
        try:
            return conn.create_table(name, schema=ERRORS_SCHEMA)
        except (ValueError, OSError):
            if name not in store.table_names(conn):
                raise
    return conn.open_table(name)


def record_errors(errors_table, rows: list[dict]) -> None:
    """Upsert error rows (keys uri, stage, message, x, y, width, height) stamped with the current time."""
    if not rows:
        return
    now = dt.datetime.now(dt.timezone.utc)
    data = {c: [] for c in ERROR_COLUMNS}
    seen = set()
    for r in rows:
        key = error_id(r[store.URI], r[archive.STAGE], [r[c] for c in store.WINDOW_COLUMNS])
        if key in seen:
            continue
        seen.add(key)
        data[store.ID].append(key)
        for c in (store.URI, archive.STAGE, archive.MESSAGE, *store.WINDOW_COLUMNS):
            data[c].append(r[c])
        data[ERROR_TIME].append(now)
    batch = pa.Table.from_pydict(data, schema=ERRORS_SCHEMA)
    store.retry_on_conflict(
        lambda: errors_table.merge_insert(store.ID).when_matched_update_all().when_not_matched_insert_all()
        .execute(batch),
        errors_table,
    )


@dataclass
class WriteCounts:
    """What the writer saw: tiles written, already present, nodata, failed; error rows by stage."""

    embedded: int = 0
    present: int = 0
    nodata: int = 0
    failed: int = 0
    failed_files: int = 0
    planned_files: int = 0


class TileWriter:
    """Consumes embedded batches: buffers tiles and commits them with ``store.add_tiles`` every
    ``commit_rows`` rows (and at :meth:`close`), records error rows, counts everything."""

    def __init__(self, table, errors_table, *, commit_rows: int = 512):
        self.table = table
        self.errors_table = errors_table
        self.commit_rows = max(1, int(commit_rows))
        self.counts = WriteCounts()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Take one pipeline batch (``status``, tile columns, ``vector`` for embedded rows)."""
        status = np.asarray(batch[archive.STATUS]).astype(str)
        self.counts.present += int((status == archive.PRESENT).sum())
        self.counts.nodata += int((status == archive.NODATA).sum())
        failed = np.flatnonzero(status == archive.ERROR)
        if len(failed):
            rows = [{c: _scalar(batch[c][i]) for c in (store.URI, archive.STAGE, archive.MESSAGE,
                                                       *store.WINDOW_COLUMNS)} for i in failed]
            self.counts.failed += len(rows)
            self.counts.failed_files += sum(1 for r in rows if r[archive.STAGE] == archive.STAGE_PLAN)
            record_errors(self.errors_table, rows)
        done = np.flatnonzero(status == archive.EMBEDDED)
        if len(done):
            self._pending.append(tiles_table(batch, done, self.table.schema))
            self._pending_rows += len(done)
            if self._pending_rows >= self.commit_rows:
                self.flush()

    def flush(self) -> None:
        """Commit the buffered tiles (one atomic commit)."""
        if not self._pending:
            return
        rows = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        store.add_tiles(self.table, rows)
        self.counts.embedded += rows.num_rows
        log.info("committed %d tiles (%d this run)", rows.num_rows, self.counts.embedded)

    def close(self) -> WriteCounts:
        """Flush and return the counts."""
        self.flush()
        return self.counts


def _scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def tiles_table(batch: dict[str, np.ndarray], rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Rows ``rows`` of an embedded batch as an Arrow table of the tile ``schema`` (NaN bounds and empty CRS
    become nulls)."""
    take = lambda c: np.asarray(batch[c])[rows]
    lon_min = take(store.LON_MIN).astype(np.float64)
    geo = np.isfinite(lon_min)
    data = {
        store.ID: take(store.ID).astype(str).tolist(),
        store.URI: take(store.URI).astype(str).tolist(),
        **{c: take(c).astype(np.int32) for c in store.WINDOW_COLUMNS},
        **{c: pa.array(take(c).astype(np.float64), mask=~geo) for c in store.BOUNDS_COLUMNS},
        store.CRS: [v if v else None for v in take(store.CRS).astype(str).tolist()],
        store.VECTOR: np.stack(list(take(store.VECTOR))).astype(np.float32),
    }
    return store.tiles_to_arrow(data, schema)
