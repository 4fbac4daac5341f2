"""The write stage of the embedding job (Ray workers): embedded tiles become Lance fragments, a report goes on.

:func:`write_tiles` runs on each batch of ``--commit-rows`` rows after the embedder actors (or in-process, for
:meth:`~rsclip.ingest.writer.TileWriter.write`): the embedded tiles are written as fragments of the tile table
that are not committed yet (:func:`rsclip.table.fragments.write_staged`), and the batch leaves the stage as one
row holding a :class:`WriteReport`: the fragments' metadata and what the driver's writer needs to count, record
and tidy up. No vector, image or per-tile string of a tile that embedded reaches the driver; only the rare
rows that need the driver's attention are named (failures, tiles of tables from before versions were
recorded, files the run must tidy up after).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from rsclip.geo import dates
from rsclip.ingest.batch import (ADOPTED, EMBED_BATCH, EMBED_BATCH_FAILED, EMBEDDED, ERROR, FILE_TILES, MESSAGE,
                                 NODATA, PRESENT, STAGE, STAGE_PLAN, STATUS, STORED_OTHER, STORED_UNVERSIONED,
                                 TRACKED, VERSION)
from rsclip.table import fragments, tiles

REPORT = "report"  # the one column of the stage's output rows
# Per-file entries of a report for tracked files: rows seen, rows planned, version, failed planning, adopted.
SEEN, PLANNED, FILE_VERSION, UNPLANNED, FILE_ADOPTED = range(5)


@dataclass
class WriteReport:
    """What one write task did (JSON between the stage and the driver, see the module doc).

    ``marks``: ``[ok, message]`` for each embedder batch whose first row is in this batch, in order;
    ``files``: per tracked uri, ``[seen, planned, version, unplanned, adopted]``; ``replaced``: ``{uri: [tile ids]}``
    of tracked files' tiles in ``staged`` (rows stored under these ids go in the commit that adds them);
    ``stored``: ``{uri: [ids stored from other versions, number stored without one]}`` of the tracked files
    whose first row is in this batch (:func:`rsclip.ingest.reading.mark_present`)."""

    staged: str = ""
    rows: int = 0
    embedded: int = 0
    present: int = 0
    nodata: int = 0
    errors: list = field(default_factory=list)
    adopted: dict = field(default_factory=dict)
    marks: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    replaced: dict = field(default_factory=dict)
    stored: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "WriteReport":
        return cls(**json.loads(text))


def write_tiles(batch: dict[str, np.ndarray], *, location: str, run: str, schema: pa.Schema,
                tracked=frozenset()) -> dict[str, np.ndarray]:
    """Ray Data stage: write the embedded tiles of ``batch`` as uncommitted fragments of the tile table at
    ``location`` (records under ``run``), return one row with its :class:`WriteReport`. ``tracked``: uris whose
    rows the driver counts besides those marked :data:`~rsclip.ingest.batch.TRACKED` (files with error rows)."""
    report = report_of(batch, tracked=tracked)
    done = np.flatnonzero(np.asarray(batch[STATUS]).astype(str) == EMBEDDED)
    if len(done):
        staged = fragments.write_staged(location, run, tiles_table(batch, done, schema))
        report.staged = staged.to_json()
    out = np.empty(1, dtype=object)
    out[0] = report.to_json()
    return {REPORT: out}


def report_of(batch: dict[str, np.ndarray], *, tracked=frozenset()) -> WriteReport:
    """The :class:`WriteReport` of ``batch`` without its fragments."""
    status = np.asarray(batch[STATUS]).astype(str)
    report = WriteReport(rows=len(status), embedded=int((status == EMBEDDED).sum()),
                         present=int((status == PRESENT).sum()), nodata=int((status == NODATA).sum()))
    text = lambda c, i: str(batch[c][i])
    report.adopted = {text(tiles.ID, i): text(VERSION, i) for i in np.flatnonzero(status == ADOPTED)}
    report.errors = [{c: _scalar(batch[c][i]) for c in (tiles.URI, STAGE, MESSAGE, *tiles.WINDOW_COLUMNS)}
                     for i in np.flatnonzero(status == ERROR)]
    marks = np.asarray(batch.get(EMBED_BATCH, ()))
    report.marks = [[int(marks[i] != EMBED_BATCH_FAILED), text(MESSAGE, i)[:300] if marks[i] == EMBED_BATCH_FAILED
                     else ""] for i in np.flatnonzero(marks)]
    marked = np.asarray(batch[TRACKED]) if TRACKED in batch else np.zeros(len(status), np.int64)
    for i in np.flatnonzero(marked):
        if text(STORED_OTHER, i) or int(batch[STORED_UNVERSIONED][i]):
            report.stored[text(tiles.URI, i)] = [json.loads(text(STORED_OTHER, i) or "[]"),
                                                 int(batch[STORED_UNVERSIONED][i])]
    if tracked or marked.any():
        for i, uri in enumerate(batch[tiles.URI]):
            uri = str(uri)
            if not marked[i] and uri not in tracked:
                continue
            entry = report.files.setdefault(uri, [0, int(batch[FILE_TILES][i]), text(VERSION, i), False, 0])
            entry[SEEN] += 1
            entry[UNPLANNED] |= bool(status[i] == ERROR and text(STAGE, i) == STAGE_PLAN)
            entry[FILE_ADOPTED] += int(status[i] == ADOPTED)
            if status[i] == EMBEDDED:
                report.replaced.setdefault(uri, []).append(text(tiles.ID, i))
    return report


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
