"""The detection job's distributed writes: scoring tasks write their parts' detections, the driver commits
metadata only; one row per tile and label after a run killed between a commit and its record; readers see one
model version while another is being scored; what a dead run wrote and never committed is removed."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rsclip.table import datasets, detections, fragments, labels, tiles
from rsclip.detect import scoring
from rsclip.detect.pipeline import DetectConfig, run_detection
from rsclip.detect.probe import train_probe
from rsclip.detect.writes import PartWriter
from rsclip.search.review import review_detections
from rsclip.search.suggest import suggest_labels
from tests.helpers import spread_files, write_scene_table

TILES = 60


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, tiny_model, rsicd_files):
    db = tmp_path_factory.mktemp("writes") / "db"
    files = spread_files(rsicd_files, TILES)
    write_scene_table(db, tiny_model, files)
    return db, [tiles.tile_id(str(f), 0, 0, 150, 150) for f in files]


@pytest.fixture
def db(scenes, tmp_path):
    """A fresh copy of the 60-tile table, labelled: ``a`` with 3 positives and 5 negatives."""
    source, ids = scenes
    shutil.copytree(source, tmp_path / "db")
    labels.add_labels(tmp_path / "db", "a", ids[:3], ids[3:8])
    return tmp_path / "db", ids


def probe_of(config: DetectConfig):
    """The probe run_detection trains for ``config`` (same labels and settings: same model version)."""
    return train_probe(tiles.open_table(config.db), config.label, labels.read_labels(config.db, config.label),
                       background=config.background, c=config.c, seed=config.seed, k=config.report_k)


def stage(config: DetectConfig, probe, parts: list[dict], *, record: bool) -> PartWriter:
    """Score ``parts`` as the job's tasks do and commit their fragments in one commit: recorded when
    ``record``, else as a driver killed between the commit and the record leaves them."""
    dataset = datasets.dataset_of(tiles.open_table(config.db))
    writer = PartWriter(detections.open_detections(config.db, create=True),
                        detections.open_progress(config.db, create=True), probe.label, probe.model_version)
    batch = {detections.PART: [p[detections.PART] for p in parts], scoring.SLICES: [p[scoring.SLICES] for p in parts]}
    reports = scoring.score_parts(batch, dataset.uri, dataset.version, probe.weights, probe.bias, probe.label,
                                  probe.model_version, **writer.stage_kwargs())
    if record:
        writer.take(reports)
        writer.flush()
    else:
        for text in reports.column(scoring.STAGED).to_pylist():
            writer.committer.add(fragments.Staged.from_json(text))
        writer.committer.commit()
    writer.finish()
    return writer


def stored(db, label="a"):
    frame = detections.open_detections(db).to_pandas()
    return frame[frame[detections.LABEL] == label]


def test_the_scoring_stage_returns_one_small_row_per_part_and_no_detection(db):
    db, ids = db
    config = DetectConfig(db=str(db), label="a", rows_per_task=8)
    probe = probe_of(config)
    dataset = datasets.dataset_of(tiles.open_table(db))
    parts = scoring.plan_parts(dataset, 8)
    target = detections.open_detections(db, create=True)
    writer = PartWriter(target, detections.open_progress(db, create=True), "a", probe.model_version)
    batch = {detections.PART: [p[detections.PART] for p in parts[:3]],
             scoring.SLICES: [p[scoring.SLICES] for p in parts[:3]]}
    out = scoring.score_parts(batch, dataset.uri, dataset.version, probe.weights, probe.bias, "a",
                              probe.model_version, **writer.stage_kwargs())
    assert out.schema == scoring.REPORT_SCHEMA and out.num_rows == 3  # no id, key, score: no detection row
    assert out.column(detections.ROWS).to_pylist() == [8, 8, 8]
    assert max(len(t) for t in out.column(scoring.STAGED).to_pylist()) < 4096
    assert target.count_rows() == 0  # written, not committed: no reader sees them
    writer.take(out)
    writer.flush()
    writer.finish()
    assert target.count_rows() == 24 and stored(db)[detections.PART].notna().all()
    summary = run_detection(config, local=True)
    assert (summary.parts_skipped, summary.rows_scored) == (3, TILES - 24)
    assert summary.commits == 1 and summary.received_bytes < 2048 * (summary.parts - summary.parts_skipped)
    frame = stored(db)
    assert len(frame) == TILES and frame[detections.KEY].is_unique and set(frame[tiles.ID]) == set(ids)


def test_a_run_killed_between_a_commit_and_its_record_then_rerun_leaves_one_row_per_tile(db):
    db, ids = db
    config = DetectConfig(db=str(db), label="a", rows_per_task=8)
    probe = probe_of(config)
    parts = scoring.plan_parts(datasets.dataset_of(tiles.open_table(db)), 8)
    stage(config, probe, parts[:2], record=True)
    stage(config, probe, parts[2:5], record=False)  # committed, never recorded
    assert len(stored(db)) == 40
    assert detections.done_parts(detections.open_progress(db), "a", probe.model_version) == \
        {p[detections.PART] for p in parts[:2]}
    summary = run_detection(config, local=True)
    assert summary.model_version == probe.model_version
    assert (summary.parts_skipped, summary.rows_scored) == (2, TILES - 16)
    frame = stored(db)
    assert len(frame) == TILES and frame[detections.KEY].is_unique and set(frame[tiles.ID]) == set(ids)
    assert set(frame[detections.MODEL_VERSION]) == {probe.model_version}


def test_the_rows_of_parts_no_longer_planned_are_replaced(db):
    """Another plan of the same version (another --rows-per-task; a compacted table likewise)."""
    db, ids = db
    run_detection(DetectConfig(db=str(db), label="a", rows_per_task=8), local=True)
    config = DetectConfig(db=str(db), label="a", rows_per_task=16)
    planned = {p[detections.PART] for p in scoring.plan_parts(datasets.dataset_of(tiles.open_table(db)), 16)}
    summary = run_detection(config, local=True)
    assert (summary.parts_skipped, summary.rows_scored) == (0, TILES)
    frame = stored(db)
    assert len(frame) == TILES and frame[detections.KEY].is_unique and set(frame[detections.PART]) == planned
    assert detections.done_parts(detections.open_progress(db), "a", summary.model_version) == planned


def test_readers_see_the_complete_version_while_a_new_one_is_scored(db):
    db, ids = db
    first = run_detection(DetectConfig(db=str(db), label="a", rows_per_task=8), local=True)
    labels.add_labels(db, "a", negative=ids[8:10])  # the label set changed: a new model version
    config = DetectConfig(db=str(db), label="a", rows_per_task=8)
    probe = probe_of(config)
    assert probe.model_version != first.model_version
    parts = scoring.plan_parts(datasets.dataset_of(tiles.open_table(db)), 8)
    stage(config, probe, parts[:3], record=True)  # the new version, partly scored
    assert set(stored(db)[detections.MODEL_VERSION]) == {first.model_version, probe.model_version}
    found = review_detections(db, "a")
    assert len(found) == TILES and set(found[detections.MODEL_VERSION]) == {first.model_version}
    suggested = suggest_labels(db, "a", k=30)  # 30 top, then the 20 other unlabelled tiles: each once
    assert len(suggested) == TILES - 10 and suggested[tiles.ID].is_unique
    detections.record_complete(detections.open_progress(db), "a", probe.model_version, TILES)
    # complete (as a run records it before dropping the older version): readers turn to it
    assert set(review_detections(db, "a")[detections.MODEL_VERSION]) == {probe.model_version}
    summary = run_detection(config, local=True)
    assert summary.removed_stale == TILES
    found = review_detections(db, "a")
    assert len(found) == TILES and set(found[detections.MODEL_VERSION]) == {probe.model_version}


def test_a_first_run_still_going_is_read(db):
    db, ids = db
    config = DetectConfig(db=str(db), label="a", rows_per_task=8)
    probe = probe_of(config)
    stage(config, probe, scoring.plan_parts(datasets.dataset_of(tiles.open_table(db)), 8)[:2], record=True)
    assert len(review_detections(db, "a")) == 16


def test_what_a_dead_run_wrote_and_never_committed_is_removed_by_the_next_run(db):
    db, ids = db
    config = DetectConfig(db=str(db), label="a", rows_per_task=8)
    probe = probe_of(config)
    dataset = datasets.dataset_of(tiles.open_table(db))
    parts = scoring.plan_parts(dataset, 8)
    target = detections.open_detections(db, create=True)
    location = datasets.dataset_of(target).uri
    dead = fragments.RunRecords(location)  # its driver died: no heartbeat
    batch = {detections.PART: [parts[0][detections.PART]], scoring.SLICES: [parts[0][scoring.SLICES]]}
    out = scoring.score_parts(batch, dataset.uri, dataset.version, probe.weights, probe.bias, "a",
                              probe.model_version, location=location, run=dead.run, schema=target.schema)
    staged = fragments.Staged.from_json(out.column(scoring.STAGED)[0].as_py())
    files = {f["path"] for text in staged.fragments for f in json.loads(text)["files"]}
    assert files and files <= set(os.listdir(os.path.join(location, "data")))
    run_detection(config, local=True)
    assert not files & set(os.listdir(os.path.join(location, "data")))
    assert not os.path.exists(dead.folder)
    frame = stored(db)
    assert len(frame) == TILES and frame[detections.KEY].is_unique
