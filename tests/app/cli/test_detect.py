"""``rsclip detect`` and ``rsclip review`` on a small real table: the job's flags, ids, uris, scores and
footprint centres best first, the shared filters, JSON, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rsclip.app.cli import main
from rsclip.detect.pipeline import DetectConfig, run_detection
from rsclip.detect.probe import train_probe
from rsclip.search.review import review_detections
from rsclip.table import detections, labels, rows, tiles
from tests.app.cli.common import N_IMAGES, grid_table, run
from tests.helpers import ROOT

MAIN = "import sys; from rsclip.app.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def detect_db(tiny_model, rsicd_files, tmp_path_factory):
    """40 real scenes on a 0.5-degree grid around (10 E, 45 N), label set ``a`` (3 +, 5 -) detected."""
    db = tmp_path_factory.mktemp("detect") / "db"
    files = grid_table(db, tiny_model, rsicd_files)
    ids = [tiles.tile_id(str(f), 0, 0, 150, 150) for f in files]
    labels.add_labels(db, "a", ids[:3], ids[3:8])
    run_detection(DetectConfig(db=str(db), label="a"), local=True)
    return db, ids


def test_review_prints_ids_uris_scores_and_centres_best_first(detect_db, capsys):
    db, _ = detect_db
    want = review_detections(db, "a")
    code, out, err = run(capsys, "review", db, "a", "-k", 5)
    lines = out.strip().splitlines()
    assert code == 0 and not err and lines[0].split() == ["id", "uri", "score", "logit", "lon", "lat"]
    assert len(lines) == 6 and [line.split()[0] for line in lines[1:]] == want[tiles.ID].head(5).tolist()
    assert os.path.basename(want[tiles.URI].iloc[0]) in lines[1]
    code, out, _ = run(capsys, "review", db, "a", "-k", 0, "--json")
    found = json.loads(out)
    assert code == 0 and [r["id"] for r in found] == want[tiles.ID].tolist() and len(found) == N_IMAGES
    logits = [r["logit"] for r in found]
    assert logits == sorted(logits, reverse=True) and len(set(logits)) == N_IMAGES
    for r in found:
        assert (r["lon"], r["lat"]) == pytest.approx(((r["lon_min"] + r["lon_max"]) / 2, (r["lat_min"] + r["lat_max"]) / 2))
        assert r["score"] == pytest.approx(1 / (1 + np.exp(-r["logit"])))


def test_review_takes_the_score_area_and_time_filters(detect_db, capsys):
    db, _ = detect_db
    everything = review_detections(db, "a")
    threshold = float(everything["score"].iloc[10])
    code, out, _ = run(capsys, "review", db, "a", "--min-score", threshold, "-k", 0, "--json")
    assert code == 0 and {r["id"] for r in json.loads(out)} == set(everything[everything["score"] >= threshold][tiles.ID])
    code, out, _ = run(capsys, "review", db, "a", "--bbox", "9.9,44.9,11.1,45.6", "-k", 0, "--json")
    inside = json.loads(out)
    assert code == 0 and 0 < len(inside) < N_IMAGES
    crossing = everything[(everything["lon_max"] >= 9.9) & (everything["lon_min"] <= 11.1)
                          & (everything["lat_max"] >= 44.9) & (everything["lat_min"] <= 45.6)]
    assert {r["id"] for r in inside} == set(crossing[tiles.ID])
    code, out, _ = run(capsys, "review", db, "a", "--date", "2020/2021", "--json")
    assert code == 0 and json.loads(out) == []  # the scenes have no acquisition time: none is in the range


@pytest.mark.parametrize("argv, message", [
    (["review", "{db}", "nothing"], "no detections of 'nothing'"),
    (["review", "{db}", "a", "-k", "-1"], "-k must be"),
    (["review", "{db}", "a", "--min-score", "2"], "min score must be"),
    (["review", "{db}", "a", "--bbox", "1,2,3"], "--bbox"),
    (["detect", "{db}", "neg"], "no positive"),
    (["detect", "{db}", "nothing"], "no label set 'nothing'"),
    (["detect", "{db}", "bad/label"], "label"),
])
def test_bad_input_is_one_line_and_exit_2(detect_db, capsys, argv, message):
    db, ids = detect_db
    labels.add_labels(db, "neg", negative=ids[:4])
    before = detections.open_detections(db).count_rows()
    code, out, err = run(capsys, *[a.format(db=db) for a in argv])
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert err.startswith("rsclip: error:") and message in err
    assert detections.open_detections(db).count_rows() == before


def test_detect_takes_every_flag_of_the_job(capsys):
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    out = capsys.readouterr().out
    for field in dataclasses.fields(DetectConfig):
        if field.name not in ("db", "label"):
            assert "--" + field.name.replace("_", "-") in out, field.name
    assert "DB LABEL" in out and "RAY_ADDRESS" in out


def test_detect_runs_the_job_on_the_cluster_of_ray_address(ray_head, detect_db):
    db, ids = detect_db
    labels.add_labels(db, "cli", ids[10:13], ids[13:18])
    env = {**ray_head.process_env(), "RAY_ADDRESS": ray_head.address}
    res = subprocess.run([sys.executable, "-c", MAIN, "detect", str(db), "cli", "--read-cpus", "0.5",
                          "--rows-per-task", "16", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["rows_scored"] == N_IMAGES and summary["parts"] == 3 and summary["metrics"]["positives"] == 3
    table = tiles.open_table(db)
    probe = train_probe(table, "cli", labels.read_labels(db, "cli"))
    assert summary["model_version"] == probe.model_version
    frame = review_detections(db, "cli")
    assert len(frame) == N_IMAGES and set(frame[detections.MODEL_VERSION]) == {probe.model_version}
    np.testing.assert_allclose(frame[detections.LOGIT], probe.logits(rows.vectors_by_id(table, list(frame[tiles.ID]))),
                               rtol=1e-5, atol=1e-5)


def test_detect_says_what_the_quality_figures_mean_and_a_rerun_scores_nothing(detect_db, capsys):
    db, _ = detect_db  # label set a was detected with the job's defaults: every part is done, no Ray starts
    code, out, err = run(capsys, "detect", db, "a")
    assert code == 0 and not err, err
    assert "3 positives, 5 negatives, 32 background tiles" in out and "precision@3" in out
    assert "estimate of how well the table's unlabelled tiles are ranked" in out
    assert f"0 of {N_IMAGES} tiles scored" in out and "already done" in out


def test_suggest_lists_the_top_ranked_and_the_least_certain_unlabelled_tiles(detect_db, capsys):
    db, ids = detect_db
    everything = review_detections(db, "a")
    unlabelled = everything[~everything[tiles.ID].isin(ids[:8])]
    code, out, err = run(capsys, "suggest", db, "a", "-k", 4, "--json")
    found = json.loads(out)
    assert code == 0 and not err and [r["why"] for r in found] == ["top"] * 4 + ["uncertain"] * 4
    assert [r["id"] for r in found[:4]] == unlabelled[tiles.ID].head(4).tolist()
    rest = unlabelled.iloc[4:]
    nearest = rest.assign(d=rest[detections.LOGIT].abs()).sort_values(["d", tiles.ID])[tiles.ID].head(4).tolist()
    assert [r["id"] for r in found[4:]] == nearest and not {r["id"] for r in found} & set(ids[:8])
    assert all(r["uri"] and (r["lon"], r["lat"]) == pytest.approx(((r["lon_min"] + r["lon_max"]) / 2,
                                                                     (r["lat_min"] + r["lat_max"]) / 2)) for r in found)
    code, out, _ = run(capsys, "suggest", db, "a")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["why", "id", "uri", "score", "logit", "lon", "lat"] and len(lines) == 21
    code, out, err = run(capsys, "suggest", db, "a", "-k", 0)
    assert code == 2 and "k must be" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "suggest", db, "nothing")
    assert code == 2 and "no detections of 'nothing'" in err


def test_label_add_takes_the_ids_review_and_suggest_print_piped_in(detect_db, capsys, monkeypatch, tmp_path):
    import io
    import shutil

    db = tmp_path / "db"
    shutil.copytree(detect_db[0], db)  # labels are written beside the tiles: a copy keeps the module's table
    _, out, _ = run(capsys, "review", db, "a", "-k", 3, "--json")
    top = [r["id"] for r in json.loads(out)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    code, _, err = run(capsys, "label", "add", db, "a", "--positive", "-")
    assert code == 0, err
    _, table_text, _ = run(capsys, "suggest", db, "a", "-k", 2)
    monkeypatch.setattr(sys, "stdin", io.StringIO(table_text))  # the table printed: its id column
    code, _, err = run(capsys, "label", "add", db, "a", "--negative", "-", "--positive", top[0])
    assert code == 0, err
    frame = labels.read_labels(db, "a")
    suggested = [line.split()[1] for line in table_text.strip().splitlines()[1:]]
    values = dict(zip(frame[tiles.ID], frame[labels.VALUE]))
    assert all(values[i] == 1 for i in top) and all(values[i] == -1 for i in suggested)
    for piped, message in (("", "no tile ids on stdin"), ("[1, 2]", 'records with an "id"'), ("{oops", "not valid JSON")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(piped))
        code, _, err = run(capsys, "label", "add", db, "a", "--positive", "-")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "label", "add", db, "a", "--positive", "-", "--negative", "-")
    assert code == 2 and "only one of" in err
