"""The writer of the embedding job (the driver's side): write reports in, commits of their fragments out.

The write stage (:mod:`~rsclip.ingest.write_stage`, Ray workers) writes the embedded tiles as Lance fragments
that no version holds yet and reports them; :class:`TileWriter` commits them in few large transactions
(:class:`rsclip.table.fragments.Committer`: a run killed at any moment loses at most the tiles not yet
committed, which a rerun fills, and what was written but never committed is removed), records failures in
``<table>_errors`` (keyed by (uri, stage, window) and upserted, so a rerun refreshes them instead of adding
copies) and counts.

Tiles stored without a version (tables of an older rsclip) that are planned again get the current one.
Tracked files are those the table held in other versions or without a version (found by the read tasks,
:func:`rsclip.ingest.reading.mark_present`, which name those tiles on the file's first row) and those with
error rows when the run started. A tracked file's tiles stored under the ids of its new ones are deleted in
the commit that adds these. Once every row of a tracked file has passed the write stage (reports count them
against the file's row count) and its tiles are committed, the writer tidies up after it: its tiles stored
from other versions and not written again are removed (:mod:`rsclip.table.source_versions`), and error rows
of the file that this run did not record again are deleted (it reads now, or fails otherwise). Error rows of
files no longer in an archive's listing (errored files no report named) are deleted by
:func:`clear_unlisted_errors` once a run over the whole archive (not a STAC search) has finished.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rsclip.table import fragments, keyed_writes, opening, source_versions, tiles
from rsclip.errors import RsclipError
from rsclip.ingest import write_stage
from rsclip.ingest.batch import MESSAGE, STAGE, STAGE_PLAN
from rsclip.ingest.write_stage import FILE_ADOPTED, FILE_VERSION, PLANNED, SEEN, UNPLANNED

log = logging.getLogger(__name__)

# Consecutive embedding batches (--batch-size tiles each, as the embedder actors run them) whose every tile
# failed in the model before the job stops: a broken model or a sticky device error would otherwise record the
# rest of the archive as errors and exit 0.
MAX_FAILED_EMBED_BATCHES = 3
# Tiles per commit (and per fragment a write task writes, :mod:`~rsclip.ingest.write_stage`), and the longest
# a written fragment waits for its commit: few large transactions, each worth at most a minute of work.
DEFAULT_COMMIT_ROWS = 16_384
COMMIT_SECONDS = 30.0
# Stored tiles of rewritten files deleted in one commit at most (bounds the commit's filter).
REPLACED_PER_COMMIT = 10_000
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
    return opening.open_or_create(tiles.connect(db), tiles.errors_table_name(table), ERRORS_SCHEMA)[0]


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


def errored_uris(errors_table) -> set[str]:
    """The uris that have rows in ``errors_table`` (one scan of its uri column)."""
    found: set[str] = set()
    for batch in errors_table.to_lance().to_batches(columns=[tiles.URI]):
        found.update(batch.column(0).to_pylist())
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
    that are not in ``listed`` (deleted from the archive since; a run passes the errored files it listed,
    :attr:`TileWriter.errored_seen`), recorded before ``before``; how many files' rows went. One scan of the
    errors table's uri column."""
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
    """A tracked file all of whose rows have passed the write stage: its version, whether it failed planning,
    and how many of its tiles were adopted (kept, version recorded)."""

    uri: str
    version: str
    unplanned: bool = False
    adopted: int = 0


class FileProgress:
    """Which tracked files have had all their rows through the write stage (the reports count them)."""

    def __init__(self):
        self._open: dict[str, list] = {}
        self.done: list[FileDone] = []  # complete since the last take()

    def see(self, files: dict[str, list]) -> None:
        """Add a report's per-file counts (``write_stage.WriteReport.files``)."""
        for uri, (seen, planned, version, unplanned, adopted) in files.items():
            have = self._open.pop(uri, None) or [0, int(planned), str(version), False, 0]
            have[SEEN] += int(seen)
            have[UNPLANNED] |= bool(unplanned)
            have[FILE_ADOPTED] += int(adopted)
            if have[SEEN] < have[PLANNED]:
                self._open[uri] = have
            else:
                self.done.append(FileDone(uri, have[FILE_VERSION], have[UNPLANNED], have[FILE_ADOPTED]))

    def take(self) -> list[FileDone]:
        """The files completed since the last call."""
        done, self.done = self.done, []
        return done


class TileWriter:
    """The driver's side of the writes: takes the write stage's reports (:mod:`~rsclip.ingest.write_stage`),
    commits their fragments once they hold ``commit_rows`` tiles (or :data:`COMMIT_SECONDS` after the oldest
    came, and at :meth:`close`) in one transaction each, records error rows, counts everything.

    ``errored``: uris with rows in the errors table when the run started; ``started``: when the run started.
    A tracked file's tiles stored under the ids of its new ones are deleted in the commit that adds them; the
    files are tidied up once complete (module doc). :meth:`write` runs the write stage in this process (no
    Ray).
    """

    def __init__(self, table, errors_table, *, commit_rows: int = DEFAULT_COMMIT_ROWS,
                 max_failed_batches: int = MAX_FAILED_EMBED_BATCHES, errored=(),
                 started: dt.datetime | None = None):
        self.table = table
        self.errors_table = errors_table
        self.commit_rows = max(1, int(commit_rows))
        self.max_failed_batches = max(1, int(max_failed_batches))
        self.counts = WriteCounts()
        self.received_bytes = 0
        self._failed_batches = 0
        self._errored = frozenset(errored)
        self.errored_seen: set[str] = set()  # errored files listed in this run
        self._started = started or dt.datetime.now(dt.timezone.utc)
        self._files = FileProgress()
        self._adopted: dict[str, str] = {}  # tile id -> version to record
        self._replaced: list[str] = []  # ids of tracked files' new tiles: rows stored under them go in the next commit
        self._old: dict[str, set] = {}  # tracked file -> its ids stored from other versions, until it is complete
        self._unversioned: dict[str, int] = {}  # tracked file -> its tiles stored without a version
        self._written: dict[str, set] = {}  # tracked file -> ids of its new tiles
        self._oldest = 0.0  # monotonic time the oldest uncommitted fragment came
        self.committer = fragments.Committer(table, tiles.ID, table.version)
        self.run = fragments.RunRecords(self.committer.location).begin()

    def stage_kwargs(self) -> dict:
        """The write stage's arguments (:func:`rsclip.ingest.write_stage.write_tiles`)."""
        return {"location": self.committer.location, "run": self.run.run, "schema": self.table.schema,
                "tracked": self._errored}

    def write(self, batch: dict[str, np.ndarray]) -> None:
        """Write one pipeline batch in this process (the write stage, then :meth:`take`)."""
        self.take(write_stage.write_tiles(batch, **self.stage_kwargs())[write_stage.REPORT][0])

    def take(self, text: str) -> write_stage.WriteReport:
        """Take one report of the write stage (JSON text); returns it."""
        self.received_bytes += len(text)
        report = write_stage.WriteReport.from_json(text)
        self.counts.present += report.present + len(report.adopted)
        self.counts.nodata += report.nodata
        self._adopted.update(report.adopted)
        self._record_failures(report.errors)
        self._check_embedding(report.marks)
        if report.staged:
            self._oldest = self._oldest or time.monotonic()
            self.committer.add(fragments.Staged.from_json(report.staged))
        for uri, (other, unversioned) in report.stored.items():  # a file's first row: every batch of it names all
            self._old.setdefault(uri, set()).update(other)
            self._unversioned[uri] = max(self._unversioned.get(uri, 0), int(unversioned))
        for uri, ids in report.replaced.items():
            self._replaced.extend(ids)
            self._written.setdefault(uri, set()).update(ids)
        self.errored_seen.update(uri for uri in report.files if uri in self._errored)
        self._files.see(report.files)
        due = self._oldest and time.monotonic() - self._oldest >= COMMIT_SECONDS
        if due or len(self._replaced) >= REPLACED_PER_COMMIT or max(
                self.committer.pending_rows, len(self._adopted), len(self._files.done)) >= self.commit_rows:
            self.flush()
        return report

    def _record_failures(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.counts.failed += len(rows)
        self.counts.failed_files += sum(1 for r in rows if r[STAGE] == STAGE_PLAN)
        self.counts.failure_kinds.update((r[STAGE], failure_kind(r[MESSAGE], r[tiles.URI])) for r in rows)
        self.counts.first_failure = self.counts.first_failure or str(rows[0][MESSAGE])
        record_errors(self.errors_table, rows)

    def _check_embedding(self, marks: list) -> None:
        """Count the embedder's batches (marked on their first row) in which every tile failed in the model;
        one that embedded anything starts the count over; raise after too many."""
        for ok, message in marks:
            if ok:
                self._failed_batches = 0
                continue
            self._failed_batches += 1
            if self._failed_batches >= self.max_failed_batches:
                self.flush()
                raise EmbeddingBroken(f"embedding failed for every tile of {self._failed_batches} consecutive "
                                      f"batches; stopping (the model or device is broken): {message[:300]}")

    def flush(self) -> None:
        """Commit the written fragments (one atomic commit, which also deletes the rows stored under the ids of
        tracked files' new tiles), then record the versions of adopted tiles and tidy up after the files completed."""
        replaced, self._replaced = self._replaced, []
        where = f"{tiles.ID} IN ({', '.join(tiles.sql_text(t) for t in replaced)})" if replaced else None
        rows = self.committer.commit(where)
        self._oldest = 0.0
        if rows:
            self.counts.embedded += rows
            log.info("committed %d tiles (%d this run)", rows, self.counts.embedded)
        if self._adopted:
            source_versions.record_versions(self.table, self._adopted)
            self._adopted = {}
        self._tidy(self._files.take())

    def _tidy(self, done: list[FileDone]) -> None:
        """After the tiles of ``done`` files are committed: remove their tiles stored from other versions that
        were not written again (windows gone, tiles that no longer read), their unversioned tiles when the
        grid changed (fewer adopted than stored; kept for a file that failed planning: nothing says they are
        stale), and their older error rows."""
        stale = [t for f in done for t in self._old.pop(f.uri, set()) - self._written.pop(f.uri, set())]
        leftovers = [f.uri for f in done if not f.unplanned and f.adopted < self._unversioned.pop(f.uri, 0)]
        self.counts.stale_removed += (source_versions.remove_tiles(self.table, stale)
                                      + source_versions.remove_unversioned(self.table, leftovers))
        clear_errors(self.errors_table, [f.uri for f in done if f.uri in self._errored], self._started)

    def close(self) -> WriteCounts:
        """Flush, remove what this run wrote and never committed, and return the counts."""
        self.flush()
        self.finish()
        return self.counts

    def finish(self) -> None:
        """Stop marking the run alive and remove its uncommitted files (also after a failure)."""
        self.run.finish()


