"""The writer of the embedding job: embedded batches into the tile table, failures into ``<table>_errors``.

It runs in the driver on the batches the pipeline streams out (one batch in memory at a time). Tiles are
written with ``tiles.add_tiles`` (merge_insert on id: atomic per commit, never a duplicate), so a job killed
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

from rsclip.core import tiles
from rsclip.errors import RsclipError
from rsclip.ingest.batch import EMBEDDED, ERROR, MESSAGE, NODATA, PRESENT, STAGE, STAGE_EMBED, STAGE_PLAN, STATUS

log = logging.getLogger(__name__)

# Consecutive batches whose every tile failed to embed before the job stops: a broken model or a sticky
# device error would otherwise record the rest of the archive as errors and exit 0.
MAX_FAILED_EMBED_BATCHES = 3


class EmbeddingBroken(RsclipError):
    """Embedding failed for every tile of several consecutive batches: the model or device is broken."""

ERROR_TIME = "time"
ERROR_COLUMNS = (tiles.ID, tiles.URI, STAGE, MESSAGE, *tiles.WINDOW_COLUMNS, ERROR_TIME)
ERRORS_SCHEMA = pa.schema([
    pa.field(tiles.ID, pa.string(), nullable=False),
    pa.field(tiles.URI, pa.string(), nullable=False),
    pa.field(STAGE, pa.string(), nullable=False),
    pa.field(MESSAGE, pa.string(), nullable=False),
    *(pa.field(c, pa.int32(), nullable=False) for c in tiles.WINDOW_COLUMNS),
    pa.field(ERROR_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
])


def error_id(uri: str, stage: str, window) -> str:
    """Key of an error row: one row per (uri, stage, window) however often the job is rerun."""
    x, y, w, h = (int(v) for v in window)
    return hashlib.sha256(f"{uri}\x00{stage}\x00{x}\x00{y}\x00{w}\x00{h}".encode()).hexdigest()[:32]


def open_errors_table(db, table: str):
    """Open (creating when missing) the errors table of tile table ``table`` in ``db``."""
    conn = tiles.connect(db)
    name = tiles.errors_table_name(table)
    if name not in tiles.table_names(conn):
        try:
            return conn.create_table(name, schema=ERRORS_SCHEMA)
        except (ValueError, OSError):
            if name not in tiles.table_names(conn):
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
        key = error_id(r[tiles.URI], r[STAGE], [r[c] for c in tiles.WINDOW_COLUMNS])
        if key in seen:
            continue
        seen.add(key)
        data[tiles.ID].append(key)
        for c in (tiles.URI, STAGE, MESSAGE, *tiles.WINDOW_COLUMNS):
            data[c].append(r[c])
        data[ERROR_TIME].append(now)
    batch = pa.Table.from_pydict(data, schema=ERRORS_SCHEMA)
    tiles.retry_on_conflict(
        lambda: errors_table.merge_insert(tiles.ID).when_matched_update_all().when_not_matched_insert_all()
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
    """Consumes embedded batches: buffers tiles and commits them with ``tiles.add_tiles`` every
    ``commit_rows`` rows (and at :meth:`close`), records error rows, counts everything."""

    def __init__(self, table, errors_table, *, commit_rows: int = 512,
                 max_failed_batches: int = MAX_FAILED_EMBED_BATCHES):
        self.table = table
        self.errors_table = errors_table
        self.commit_rows = max(1, int(commit_rows))
        self.max_failed_batches = max(1, int(max_failed_batches))
        self.counts = WriteCounts()
        self._failed_batches = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Take one pipeline batch (``status``, tile columns, ``vector`` for embedded rows)."""
        status = np.asarray(batch[STATUS]).astype(str)
        self.counts.present += int((status == PRESENT).sum())
        self.counts.nodata += int((status == NODATA).sum())
        failed = np.flatnonzero(status == ERROR)
        if len(failed):
            rows = [{c: _scalar(batch[c][i]) for c in (tiles.URI, STAGE, MESSAGE,
                                                       *tiles.WINDOW_COLUMNS)} for i in failed]
            self.counts.failed += len(rows)
            self.counts.failed_files += sum(1 for r in rows if r[STAGE] == STAGE_PLAN)
            record_errors(self.errors_table, rows)
        done = np.flatnonzero(status == EMBEDDED)
        self._check_embedding(batch, status, done)
        if len(done):
            self._pending.append(tiles_table(batch, done, self.table.schema))
            self._pending_rows += len(done)
            if self._pending_rows >= self.commit_rows:
                self.flush()

    def _check_embedding(self, batch: dict[str, np.ndarray], status: np.ndarray, done: np.ndarray) -> None:
        """Count batches in which every tile that reached the model failed there; raise after too many."""
        failed = (status == ERROR) & (np.asarray(batch[STAGE]).astype(str) == STAGE_EMBED)
        if len(done):
            self._failed_batches = 0
        elif failed.any():
            self._failed_batches += 1
            if self._failed_batches >= self.max_failed_batches:
                self.flush()
                first = str(np.asarray(batch[MESSAGE])[np.flatnonzero(failed)[0]])
                raise EmbeddingBroken(f"embedding failed for every tile of {self._failed_batches} consecutive "
                                      f"batches; stopping (the model or device is broken): {first[:300]}")

    def flush(self) -> None:
        """Commit the buffered tiles (one atomic commit)."""
        if not self._pending:
            return
        rows = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        tiles.add_tiles(self.table, rows)
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
    lon_min = take(tiles.LON_MIN).astype(np.float64)
    geo = np.isfinite(lon_min)
    data = {
        tiles.ID: take(tiles.ID).astype(str).tolist(),
        tiles.URI: take(tiles.URI).astype(str).tolist(),
        **{c: take(c).astype(np.int32) for c in tiles.WINDOW_COLUMNS},
        **{c: pa.array(take(c).astype(np.float64), mask=~geo) for c in tiles.BOUNDS_COLUMNS},
        tiles.CRS: [v if v else None for v in take(tiles.CRS).astype(str).tolist()],
        tiles.VECTOR: np.stack(list(take(tiles.VECTOR))).astype(np.float32),
    }
    return tiles.tiles_to_arrow(data, schema)
