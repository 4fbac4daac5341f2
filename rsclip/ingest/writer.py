"""The writer of the embedding job: embedded batches into the tile table, failures into ``<table>_errors``.

It runs in the driver on the batches the pipeline streams out (one batch in memory at a time). Tiles are
written with ``tiles.add_tiles`` (merge_insert on id: atomic per commit, never a duplicate; a tile of a
rewritten object replaces its old row), so a job killed at any moment loses at most the tiles not yet
committed and a rerun fills exactly those. Error rows are keyed by (uri, stage, window) and upserted, so a
rerun refreshes them instead of adding copies.

Tiles stored without a version (tables of an older rsclip) that are planned again get the current one.
Once every row of a file has passed (rows carry the file's row count) and its tiles are committed, the
writer tidies up after it: its tiles of other versions that this run did not replace are removed
(:mod:`rsclip.table.source_versions`), and error rows of the file that this run did not record again are
deleted (it reads now, or fails otherwise). Only files that the table held in other versions, or that had
error rows, when the run started are tracked. Error rows of files no longer in an archive's listing are deleted
by :func:`clear_unlisted_errors` (a run over the whole archive, not a STAC search).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rsclip.geo import dates
from rsclip.table import keyed_writes, source_versions, tiles
from rsclip.errors import RsclipError
from rsclip.ingest.batch import (ADOPTED, EMBED_BATCH, EMBED_BATCH_FAILED, EMBEDDED, ERROR, FILE_TILES, MESSAGE,
                                 NODATA, PRESENT, STAGE, STAGE_PLAN, STATUS, VERSION)

log = logging.getLogger(__name__)

# Consecutive embedding batches (--batch-size tiles each, as the embedder actors run them) whose every tile
# failed in the model before the job stops: a broken model or a sticky device error would otherwise record the
# rest of the archive as errors and exit 0.
MAX_FAILED_EMBED_BATCHES = 3
# Error kinds named in the line of a run that embedded nothing.
SHOWN_FAILURE_KINDS = 3
# Uris named in one delete of error rows: bounds the SQL text of one statement.
CLEAR_URIS_PER_DELETE = 500


class EmbeddingBroken(RsclipError):
    """Embedding failed for every tile of several consecutive batches: the model or device is broken."""


class NothingEmbedded(RsclipError):
    """A run in which every planned tile failed: nothing of the archive is in the table."""


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
    keyed_writes.merge_on(errors_table, tiles.ID, batch)


def errored_uris(errors_table, uris) -> set[str]:
    """Those of ``uris`` that have rows in ``errors_table`` (one scan of its uri column)."""
    wanted, found = set(uris), set()
    for batch in errors_table.to_lance().to_batches(columns=[tiles.URI]):
        found.update(u for u in batch.column(0).to_pylist() if u in wanted)
    return found


def clear_errors(errors_table, uris, before: dt.datetime) -> None:
    """Delete the error rows of ``uris`` recorded before ``before`` (not by the run that started then)."""
    uris = list(uris)
    stamp = before.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    for start in range(0, len(uris), CLEAR_URIS_PER_DELETE):
        names = ", ".join(tiles.sql_text(u) for u in uris[start:start + CLEAR_URIS_PER_DELETE])
        where = f"{tiles.URI} IN ({names}) AND {ERROR_TIME} < timestamp '{stamp}'"
        keyed_writes.retry_on_conflict(lambda: errors_table.delete(where), errors_table)


def clear_unlisted_errors(errors_table, root: str, listed, before: dt.datetime) -> int:
    """Delete the error rows of files under the archive ``root`` (:func:`~rsclip.ingest.listing.archive_root`)
    that are not in ``listed`` (deleted from the archive since), recorded before ``before``; how many files'
    rows went. One scan of the errors table's uri column."""
    listed, prefix, gone = set(listed), root.rstrip("/") + "/", set()
    for batch in errors_table.to_lance().to_batches(columns=[tiles.URI]):
        gone.update(u for u in batch.column(0).to_pylist() if u.startswith(prefix) and u not in listed)
    clear_errors(errors_table, sorted(gone), before)
    return len(gone)


def failure_kind(message: str, uri: str) -> str:
    """The kind of a recorded failure, for counting: its message without the uri, up to the first colon
    (``"UnidentifiedImageError"``, ``"access denied"``, ``"empty file (0 bytes)"``), at most 80 characters."""
    text = message[len(uri) + 2:] if message.startswith(f"{uri}: ") else message
    return text.split(":", 1)[0].strip()[:80] or "unknown"


@dataclass
class WriteCounts:
    """What the writer saw: tiles written, already present, nodata, failed; error rows by stage; stale
    tiles of rewritten objects removed."""

    embedded: int = 0
    present: int = 0
    nodata: int = 0
    failed: int = 0
    failed_files: int = 0
    planned_files: int = 0
    stale_removed: int = 0
    failure_kinds: Counter = field(default_factory=Counter)  # (stage, kind) -> rows
    first_failure: str = ""

    def failures(self) -> str:
        """The failures in a few words: ``"57 tiles failed (read: UnidentifiedImageError x50, plan: empty
        file (0 bytes) x7); first: <uri>: <message>"``."""
        kinds = ", ".join(f"{stage}: {kind} x{n}" for (stage, kind), n in
                          self.failure_kinds.most_common(SHOWN_FAILURE_KINDS))
        more = len(self.failure_kinds) - SHOWN_FAILURE_KINDS
        kinds += f", {more} other kinds" if more > 0 else ""
        return f"{self.failed} tiles failed ({kinds}); first: {self.first_failure[:300]}"

    def nothing_embedded(self) -> bool:
        """Whether every tile planned failed: none embedded, none present already, none nodata."""
        return self.failed > 0 and not (self.embedded or self.present or self.nodata)


@dataclass
class FileDone:
    """A tracked file all of whose rows have passed the writer: its version, whether it failed planning,
    the ids embedded for it in this run and how many of its tiles were adopted (kept, version recorded)."""

    uri: str
    version: str
    unplanned: bool = False
    written: set = field(default_factory=set)
    adopted: int = 0


class FileProgress:
    """Which of the ``tracked`` files have had all their rows through the writer (each row carries its
    file's row count); ids embedded are kept only for the files in ``keep_ids``."""

    def __init__(self, tracked, keep_ids=()):
        self.tracked, self.keep_ids = frozenset(tracked), frozenset(keep_ids)
        self._open: dict[str, tuple[int, FileDone]] = {}
        self.done: list[FileDone] = []  # complete since the last take()

    def see(self, batch: dict[str, np.ndarray]) -> None:
        """Count the rows of ``batch`` (keys id, uri, version, file_tiles, status, stage)."""
        if not self.tracked:
            return
        for i, uri in enumerate(batch[tiles.URI]):
            uri = str(uri)
            if uri not in self.tracked:
                continue
            seen, file = self._open.get(uri) or (0, FileDone(uri, str(batch[VERSION][i])))
            status = batch[STATUS][i]
            file.unplanned |= bool(status == ERROR and batch[STAGE][i] == STAGE_PLAN)
            file.adopted += int(status == ADOPTED)
            if status == EMBEDDED and uri in self.keep_ids:
                file.written.add(str(batch[tiles.ID][i]))
            if seen + 1 < int(batch[FILE_TILES][i]):
                self._open[uri] = (seen + 1, file)
            else:
                self._open.pop(uri, None)
                self.done.append(file)

    def take(self) -> list[FileDone]:
        """The files completed since the last call."""
        done, self.done = self.done, []
        return done


class TileWriter:
    """Consumes embedded batches: buffers tiles and commits them with ``tiles.add_tiles`` every
    ``commit_rows`` rows (and at :meth:`close`), records error rows, counts everything.

    ``stored``: what the table held of the listed files in other versions when the run started
    (:func:`~rsclip.table.source_versions.stored_versions`); ``errored``: uris with rows in the errors table
    then; ``started``: when the run started. Those files are tidied up once complete (module doc).
    """

    def __init__(self, table, errors_table, *, commit_rows: int = 512,
                 max_failed_batches: int = MAX_FAILED_EMBED_BATCHES,
                 stored: source_versions.StoredVersions | None = None, errored=(),
                 started: dt.datetime | None = None):
        self.table = table
        self.errors_table = errors_table
        self.commit_rows = max(1, int(commit_rows))
        self.max_failed_batches = max(1, int(max_failed_batches))
        self.counts = WriteCounts()
        self._failed_batches = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._stored, self._errored = stored or source_versions.StoredVersions(), frozenset(errored)
        self._started = started or dt.datetime.now(dt.timezone.utc)
        self._files = FileProgress(self._stored.uris | self._errored, keep_ids=self._stored.other)
        self._adopted: dict[str, str] = {}  # tile id -> version to record

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Take one pipeline batch (``status``, tile columns, ``vector`` for embedded rows)."""
        status = np.asarray(batch[STATUS]).astype(str)
        adopted = np.flatnonzero(status == ADOPTED)
        self.counts.present += int((status == PRESENT).sum()) + len(adopted)
        self.counts.nodata += int((status == NODATA).sum())
        self._adopted.update((str(batch[tiles.ID][i]), str(batch[VERSION][i])) for i in adopted)
        failed = np.flatnonzero(status == ERROR)
        if len(failed):
            rows = [{c: _scalar(batch[c][i]) for c in (tiles.URI, STAGE, MESSAGE,
                                                       *tiles.WINDOW_COLUMNS)} for i in failed]
            self.counts.failed += len(rows)
            self.counts.failed_files += sum(1 for r in rows if r[STAGE] == STAGE_PLAN)
            self.counts.failure_kinds.update((r[STAGE], failure_kind(r[MESSAGE], r[tiles.URI])) for r in rows)
            self.counts.first_failure = self.counts.first_failure or str(rows[0][MESSAGE])
            record_errors(self.errors_table, rows)
        done = np.flatnonzero(status == EMBEDDED)
        self._check_embedding(batch)
        if len(done):
            self._pending.append(tiles_table(batch, done, self.table.schema))
            self._pending_rows += len(done)
        self._files.see(batch)
        if max(self._pending_rows, len(self._adopted), len(self._files.done)) >= self.commit_rows:
            self.flush()

    def _check_embedding(self, batch: dict[str, np.ndarray]) -> None:
        """Count the embedder's batches (marked on their first row, in the order they arrive) in which every
        tile failed in the model; one that embedded anything starts the count over; raise after too many."""
        marks = np.asarray(batch.get(EMBED_BATCH, ()))
        for i in np.flatnonzero(marks):
            if marks[i] != EMBED_BATCH_FAILED:
                self._failed_batches = 0
                continue
            self._failed_batches += 1
            if self._failed_batches >= self.max_failed_batches:
                self.flush()
                raise EmbeddingBroken(f"embedding failed for every tile of {self._failed_batches} consecutive "
                                      f"batches; stopping (the model or device is broken): "
                                      f"{str(batch[MESSAGE][i])[:300]}")

    def flush(self) -> None:
        """Commit the buffered tiles (one atomic commit), then record the versions of adopted tiles and tidy
        up after the files completed so far."""
        if self._pending:
            rows = pa.concat_tables(self._pending)
            self._pending, self._pending_rows = [], 0
            tiles.add_tiles(self.table, rows)
            self.counts.embedded += rows.num_rows
            log.info("committed %d tiles (%d this run)", rows.num_rows, self.counts.embedded)
        if self._adopted:
            source_versions.record_versions(self.table, self._adopted)
            self._adopted = {}
        self._tidy(self._files.take())

    def _tidy(self, done: list[FileDone]) -> None:
        """After the tiles of ``done`` files are committed: remove their tiles of other versions that this
        run did not replace, their unversioned tiles when the grid changed (fewer adopted than stored; kept
        for a file that failed planning: nothing says they are stale), and their older error rows."""
        stale = [t for f in done for t in self._stored.other.get(f.uri, ()) if t not in f.written]
        leftovers = [f.uri for f in done if not f.unplanned and f.adopted < self._stored.unversioned[f.uri]]
        self.counts.stale_removed += (source_versions.remove_tiles(self.table, stale)
                                      + source_versions.remove_unversioned(self.table, leftovers))
        clear_errors(self.errors_table, [f.uri for f in done if f.uri in self._errored], self._started)

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
        tiles.SOURCE_VERSION: [v if v else None for v in take(VERSION).astype(str).tolist()],
    }
    if tiles.FOOTPRINT in batch:  # WKB of georeferenced tiles, b"" for the others
        data[tiles.FOOTPRINT] = [bytes(v) if v else None for v in take(tiles.FOOTPRINT).tolist()]
    if tiles.DATETIME in batch:  # microseconds since the epoch, dates.NULL_MICROS for unknown
        when = take(tiles.DATETIME).astype(np.int64)
        data[tiles.DATETIME] = pa.array(when, type=pa.int64(), mask=when == dates.NULL_MICROS).cast(
            pa.timestamp("us", tz="UTC"))
    if tiles.ITEM_ID in batch:
        data[tiles.ITEM_ID] = [v if v else None for v in take(tiles.ITEM_ID).astype(str).tolist()]
    for column in (tiles.CLOUD_COVER, tiles.NODATA_FRACTION):  # NaN: unknown
        if column in batch:
            values = take(column).astype(np.float64)
            data[column] = pa.array(values, mask=~np.isfinite(values))
    return tiles.tiles_to_arrow(data, schema)
