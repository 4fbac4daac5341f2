"""The detection job's writes, driver side: the parts' staged fragments committed in few large commits, then recorded.

The scoring tasks (:func:`rsclip.detect.scoring.score_parts`) write each part's detections as fragments of
``<table>_detections`` that are not committed yet and send the driver one small row per part (the part, its
rows, the fragments' metadata). :class:`PartWriter` adds them to a :class:`rsclip.table.fragments.Committer`
and commits once :data:`DEFAULT_COMMIT_ROWS` detections wait (or :data:`COMMIT_SECONDS` after the oldest came,
and at the end) in one atomic append, then records the parts that commit completed in the progress table
(:func:`rsclip.table.detections.record_parts`). Killed between the two, the rows are in and the parts are not:
the next run deletes those rows before scoring them again (:func:`rsclip.table.detections.settle`).

A label's rows of two model versions share their keys until the older version is dropped, so the committer
does not keep one row per key; when another writer committed in between, the rows of this version in the parts
just committed are checked for a second run of the same version (:func:`rsclip.table.detections.drop_duplicates`).
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from rsclip.table import detections, fragments
from rsclip.detect.scoring import STAGED

log = logging.getLogger("rsclip.detect.pipeline")  # the job's progress lines (the web app's worker reads them)
# Detections per commit (a part's fragments wait at most COMMIT_SECONDS): few large commits, each a few
# seconds of scoring; a kill loses at most that much (BENCHMARKS.md, "Detection").
DEFAULT_COMMIT_ROWS = 1 << 20
COMMIT_SECONDS = 30.0


class PartWriter:
    """Commits the staged parts of one run of ``model_version`` of ``label`` into ``target`` (the detections
    table) and records them in ``progress``; :meth:`finish` (also after a failure) removes what the run wrote
    and never committed."""

    def __init__(self, target, progress, label: str, model_version: str, *,
                 commit_rows: int = DEFAULT_COMMIT_ROWS):
        self.target, self.progress = target, progress
        self.label, self.model_version = label, model_version
        self.commit_rows = max(1, int(commit_rows))
        self.committer = fragments.Committer(target, None, target.version)
        self.run = fragments.RunRecords(self.committer.location).begin()
        self.waiting: dict[str, int] = {}  # parts in the pending fragments -> their detections
        self.written = self.parts = self.received_bytes = 0
        self._oldest = 0.0  # monotonic time the oldest uncommitted part came

    def stage_kwargs(self) -> dict:
        """The write arguments of :func:`rsclip.detect.scoring.score_parts`."""
        return {"location": self.committer.location, "run": self.run.run, "schema": self.target.schema}

    def take(self, reports: pa.Table) -> None:
        """Take the scoring stage's rows (:data:`rsclip.detect.scoring.REPORT_SCHEMA`); commit when due."""
        columns = (reports.column(c).to_pylist() for c in (detections.PART, detections.ROWS, STAGED))
        for part, rows, text in zip(*columns):
            self.received_bytes += len(text) + len(part) + 8
            self.committer.add(fragments.Staged.from_json(text))
            self.waiting[part] = int(rows)
            self._oldest = self._oldest or time.monotonic()
        due = self._oldest and time.monotonic() - self._oldest >= COMMIT_SECONDS
        if due or self.committer.pending_rows >= self.commit_rows:
            self.flush()

    def flush(self) -> int:
        """Commit the pending fragments in one commit, then record their parts; returns the rows committed."""
        waiting, self.waiting, self._oldest = self.waiting, {}, 0.0
        before = self.committer.known
        rows = self.committer.commit()
        if rows:
            self.written += rows
            log.info("committed %d detections (%d this run)", rows, self.written)
            if self.committer.known > before + 1:  # another writer committed in between: maybe this version too
                detections.drop_duplicates(self.target, self.label, self.model_version, waiting)
        detections.record_parts(self.progress, self.label, self.model_version, waiting)
        for part, count in waiting.items():
            log.info("recorded part %s (%d rows)", part, count)
        self.parts += len(waiting)
        return rows

    def finish(self) -> None:
        """Stop marking the run alive and remove the files it wrote and never committed."""
        self.run.finish()
