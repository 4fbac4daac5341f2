"""Scoring: every row of the tile table through the probe, in parts read straight from Lance fragments.

The driver plans *parts* from the table version's fragment metadata only (:func:`plan_parts`: slices of
fragments of about ``rows_per_part`` rows, small fragments grouped, large ones cut), so what it holds grows
with the number of parts (tens per million rows), never with the rows. Each part is scored by
:func:`score_parts`, a Ray Data stage: it opens the same table version, reads its slices' ids, bounds and
vectors fragment by fragment, computes the detection rows (:data:`rsclip.table.detections.STORED_SCHEMA`:
the part's key in ``part``), writes them as fragments of ``<table>_detections`` that are not committed yet
(:func:`rsclip.table.fragments.write_staged`) and returns one small row per part (:data:`REPORT_SCHEMA`: the
part, its rows, the staged fragments' metadata): no detection row reaches the driver, which commits the
fragments. No vector index is used or needed.

A part's key is a hash of its slices, so a rerun on the same table version plans the same keys and can skip
the parts already committed (:func:`rsclip.table.detections.settle`); after a compaction the fragments, and so
the keys, change, the rows of the old parts are deleted and every tile is scored again.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rsclip.runtime import storage
from rsclip.table import detections, fragments, rows, tiles
from rsclip.detect.probe import sigmoid

ROWS_PER_PART = 65_536
READ_BATCH_ROWS = 16_384
SLICES = "slices"  # JSON list of [fragment id, offset, rows] of a part
READ_COLUMNS = (tiles.ID, *tiles.BOUNDS_COLUMNS, tiles.VECTOR)
STAGED = "staged"  # the Staged JSON of a part's fragments
REPORT_SCHEMA = pa.schema([pa.field(detections.PART, pa.string(), nullable=False),
                           pa.field(detections.ROWS, pa.int64(), nullable=False),
                           pa.field(STAGED, pa.string(), nullable=False)])


def plan_parts(dataset, rows_per_part: int = ROWS_PER_PART) -> list[dict]:
    """The parts of a Lance dataset version: dicts with ``part`` (key), ``slices`` (JSON) and ``rows``.

    Fragments are taken in id order; one longer than ``rows_per_part`` is cut, shorter ones share a part.
    Empty fragments are left out. Reads fragment metadata only.
    """
    parts: list[dict] = []
    slices: list[list[int]] = []
    filled = 0

    def close() -> None:
        nonlocal slices, filled
        if slices:
            text = json.dumps(slices, separators=(",", ":"))
            key = hashlib.sha256(text.encode()).hexdigest()[:20]
            parts.append({detections.PART: key, SLICES: text, detections.ROWS: filled})
        slices, filled = [], 0

    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.fragment_id):
        count, offset = int(fragment.metadata.num_rows), 0
        while offset < count:
            take = min(count - offset, rows_per_part - filled)
            slices.append([int(fragment.fragment_id), offset, take])
            filled += take
            offset += take
            if filled >= rows_per_part:
                close()
    close()
    return parts


@functools.lru_cache(maxsize=4)
def _dataset(uri: str, version: int, options: tuple):
    import lance

    return lance.dataset(uri, version=version, storage_options=dict(options) or None)


def open_version(uri: str, version: int):
    """The Lance dataset at ``uri``, ``version``, opened once per process (the store's settings from this
    process's environment, as every rsclip client reads them)."""
    options = storage.lance_storage_options() if storage.is_remote(uri) else {}
    return _dataset(uri, int(version), tuple(sorted(options.items())))


def open_for_scoring(uri: str, version: int) -> int:
    """Open the table version in this worker process ahead of its parts; returns the process id."""
    open_version(uri, version)
    return os.getpid()


def detection_rows(batch: pa.RecordBatch, weights: np.ndarray, bias: float, label: str, model_version: str,
                   part: str, now: dt.datetime) -> pa.Table:
    """The detection rows (:data:`rsclip.table.detections.STORED_SCHEMA`) of one read batch of tiles."""
    n = batch.num_rows
    vectors = rows.vectors_of(batch.column(tiles.VECTOR))
    logits = (vectors @ weights + np.float32(bias)).astype(np.float64)
    ids = batch.column(tiles.ID)
    constant = lambda value, kind: pa.repeat(pa.scalar(value, kind), n)  # noqa: E731  (no Python lists)
    columns = {
        detections.KEY: pc.binary_join_element_wise(pa.scalar(label), ids, ":"), tiles.ID: ids,
        detections.LABEL: constant(label, pa.string()), detections.MODEL_VERSION: constant(model_version, pa.string()),
        detections.SCORE: pa.array(sigmoid(logits), pa.float32()), detections.LOGIT: pa.array(logits, pa.float64()),
        **{c: batch.column(c) for c in tiles.BOUNDS_COLUMNS},
        detections.TIME: constant(now, pa.timestamp("us", tz="UTC")), detections.PART: constant(part, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=detections.STORED_SCHEMA)


def part_rows(dataset, part: str, slices: str, weights: np.ndarray, bias: float, label: str, model_version: str,
              now: dt.datetime) -> pa.Table:
    """The detection rows of every tile of one part (``slices``: its JSON) of the Lance ``dataset``."""
    weights = np.asarray(weights, dtype=np.float32)
    out = []
    for fragment_id, offset, count in json.loads(str(slices)):
        fragment = dataset.get_fragment(int(fragment_id))
        for rb in fragment.to_batches(columns=list(READ_COLUMNS), offset=int(offset), limit=int(count),
                                      batch_size=READ_BATCH_ROWS):
            out.append(detection_rows(rb, weights, bias, label, model_version, part, now))
    return pa.concat_tables(out) if out else detections.STORED_SCHEMA.empty_table()


def score_parts(batch: dict[str, np.ndarray], uri: str, version: int, weights: np.ndarray, bias: float,
                label: str, model_version: str, location: str, run: str, schema: pa.Schema) -> pa.Table:
    """Ray Data stage: score every tile of the parts of ``batch`` (``part``, ``slices``), write each part's rows
    as uncommitted fragments of the detections table at ``location`` (``schema``: its schema; write records
    under ``run``) and return one :data:`REPORT_SCHEMA` row per part."""
    dataset = open_version(uri, version)
    now = dt.datetime.now(dt.timezone.utc)
    reports = {detections.PART: [], detections.ROWS: [], STAGED: []}
    for part, text in zip(batch[detections.PART], batch[SLICES]):
        found = part_rows(dataset, str(part), str(text), weights, bias, label, model_version, now)
        staged = fragments.write_staged(location, run, found.select(schema.names).cast(schema))
        reports[detections.PART].append(str(part))
        reports[detections.ROWS].append(found.num_rows)
        reports[STAGED].append(staged.to_json())
    return pa.Table.from_pydict(reports, schema=REPORT_SCHEMA)


def score_locally(dataset, parts: list[dict], weights: np.ndarray, bias: float, label: str, model_version: str):
    """Yield the detection rows of ``parts`` one part at a time in this process, writing nothing (tests)."""
    now = dt.datetime.now(dt.timezone.utc)
    for part in parts:
        yield part_rows(dataset, part[detections.PART], part[SLICES], weights, bias, label, model_version, now)
