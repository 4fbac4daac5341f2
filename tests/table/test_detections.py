"""The detections tables (rsclip.table.detections): which model version of a label readers see, and how a run
settles the rows of its version against the parts recorded."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from rsclip.table import detections, tiles

UTC = dt.timezone.utc


def rows(label: str, version: str, ids, part=None, when=None) -> pa.Table:
    """Detection rows of ``label``'s ``version`` for tiles ``ids`` (``part``: their part, None: none)."""
    n = len(ids)
    return pa.Table.from_pydict({
        detections.KEY: [detections.detection_key(label, i) for i in ids], tiles.ID: list(ids),
        detections.LABEL: [label] * n, detections.MODEL_VERSION: [version] * n,
        detections.SCORE: np.full(n, 0.5, np.float32), detections.LOGIT: [0.0] * n,
        **{c: [None] * n for c in tiles.BOUNDS_COLUMNS}, detections.TIME: [when or dt.datetime.now(UTC)] * n,
        detections.PART: [part] * n}, schema=detections.STORED_SCHEMA)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "db"


def shown(db, label="x"):
    return detections.shown_version(detections.open_detections(db), detections.open_progress(db), label)


def test_readers_see_the_newest_complete_version_else_the_most_recorded_one(db):
    target = detections.open_detections(db, create=True)
    progress = detections.open_progress(db, create=True)
    target.add(rows("x", "v1", [f"t{i}" for i in range(6)], part="p"))
    target.add(rows("x", "v2", [f"t{i}" for i in range(4)], part="q"))
    detections.record_parts(progress, "x", "v1", {"p": 6})
    detections.record_parts(progress, "x", "v2", {"q": 4})
    assert shown(db) == "v1"  # no completion recorded (an older rsclip): the version with most rows recorded
    detections.record_parts(progress, "x", "v2", {"r": 4})
    assert shown(db) == "v2"
    detections.record_complete(progress, "x", "v1", 6)
    assert shown(db) == "v1"  # complete beats more rows of a version still being scored
    found, where = detections.label_rows(db, "x")
    assert found.count_rows(where) == 6
    detections.record_complete(progress, "x", "v2", 8)
    assert shown(db) == "v2"  # the newest complete one
    assert detections.label_rows(db, "nothing") is None and shown(db, "nothing") is None


def test_without_records_readers_see_the_version_with_most_rows_then_the_newest(db):
    target = detections.open_detections(db, create=True)
    old, new = dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 6, 1, tzinfo=UTC)
    target.add(rows("x", "a", ["t1", "t2", "t3"], when=new))
    target.add(rows("x", "b", ["t1", "t2", "t3", "t4"], when=old))
    assert shown(db) == "b"
    target.add(rows("x", "a", ["t4"], when=new))
    assert shown(db) == "a"  # 4 rows each: the newest
    assert detections.label_rows(db, "x")[1] == detections.version_sql("x", "a")


def test_settle_deletes_the_rows_of_parts_not_recorded_and_keeps_the_others(db):
    target = detections.open_detections(db, create=True)
    progress = detections.open_progress(db, create=True)
    target.add(rows("x", "v", ["t1", "t2"], part="p1"))
    target.add(rows("x", "v", ["t3", "t4"], part="p2"))  # committed, never recorded
    target.add(rows("x", "w", ["t3", "t4"], part="p2"))  # another version: not touched
    detections.record_parts(progress, "x", "v", {"p1": 2})
    assert detections.settle(target, progress, "x", "v", ["p1", "p2"]) == {"p1"}
    held = target.to_pandas()
    assert sorted(held[held[detections.MODEL_VERSION] == "v"][tiles.ID]) == ["t1", "t2"]
    assert target.count_rows(detections.version_sql("x", "w")) == 2
    assert detections.settle(target, progress, "x", "v", ["p1", "p2"]) == {"p1"}  # settled: nothing more


def test_settle_scores_everything_again_when_rows_cannot_be_told_apart(db):
    target = detections.open_detections(db, create=True)
    progress = detections.open_progress(db, create=True)
    target.add(rows("x", "v", ["t1", "t2", "t3"]))  # rows without a part (an older rsclip), one more than recorded
    detections.record_parts(progress, "x", "v", {"p1": 2})
    detections.record_complete(progress, "x", "v", 2)
    assert detections.settle(target, progress, "x", "v", ["p1", "p2"]) == set()
    assert target.count_rows(detections.version_sql("x", "v")) == 0
    assert progress.count_rows(detections.version_sql("x", "v")) == 0


def test_rows_recorded_and_held_alike_are_kept_even_without_parts(db):
    target = detections.open_detections(db, create=True)
    progress = detections.open_progress(db, create=True)
    target.add(rows("x", "v", ["t1", "t2"]))  # an older rsclip's complete run: no parts stored, all recorded
    detections.record_parts(progress, "x", "v", {"p1": 2})
    assert detections.settle(target, progress, "x", "v", ["p1"]) == {"p1"}
    assert target.count_rows() == 2


def test_duplicates_of_one_version_are_dropped_and_another_version_kept(db):
    target = detections.open_detections(db, create=True)
    target.add(rows("x", "v", ["t1", "t2"], part="p"))
    target.add(rows("x", "w", ["t1", "t2"], part="p"))
    target.add(rows("x", "v", ["t1", "t2"], part="p"))  # a second run of v committed p too
    assert detections.drop_duplicates(target, "x", "v", {"p"}) == 2
    assert target.count_rows(detections.version_sql("x", "v")) == 2
    assert target.count_rows(detections.version_sql("x", "w")) == 2
