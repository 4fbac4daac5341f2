"""Labels (``<table>_labels``: idempotent upserts and removals, surviving re-embedding) and example search
(GeoVibes' query vector, examples left out), from Python and from the ``rsclip`` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rsclip
from rsclip.app.cli import main
from rsclip.table import labels, tiles
from rsclip.errors import InvalidInput, NotFound
from rsclip.search.examples import combine
from tests.helpers import ROOT, spread_files, write_scene_table


@pytest.fixture
def scene_db(tmp_path, tiny_model, rsicd_files):
    db = tmp_path / "db"
    files = spread_files(rsicd_files, 40)
    write_scene_table(db, tiny_model, files)
    ids = [tiles.tile_id(str(f), 0, 0, 150, 150) for f in files]
    return db, ids, files


def test_labels_upsert_and_remove_idempotently(scene_db):
    db, ids, _ = scene_db
    assert labels.add_labels(db, "ponds", ids[:3], ids[3:5], note="first pass") == 5
    assert labels.add_labels(db, "ponds", ids[:3], ids[3:5]) == 5  # again: same rows, no copies
    assert labels.add_labels(db, "ponds", positive=[ids[3]]) == 1  # relabelled: negative -> positive
    labels.add_labels(db, "roads", [ids[0]])
    frame = rsclip.read_labels(db, "ponds")
    assert len(frame) == 5 and set(frame[tiles.ID]) == set(ids[:5])
    assert dict(zip(frame[tiles.ID], frame[labels.VALUE]))[ids[3]] == labels.POSITIVE
    sets = rsclip.label_sets(db).set_index(labels.LABEL)
    assert sets.loc["ponds", "positives"] == 4 and sets.loc["ponds", "negatives"] == 1
    assert labels.remove_labels(db, "ponds", [ids[0]]) == 1
    assert labels.remove_labels(db, "ponds", [ids[0]]) == 0  # already gone
    assert labels.remove_labels(db, "ponds") == 4
    with pytest.raises(NotFound, match="no label set 'ponds'.*roads"):
        labels.read_labels(db, "ponds")


def test_labels_survive_re_embedding_the_table(scene_db, tmp_path, tiny_model):
    db, ids, files = scene_db
    labels.add_labels(db, "x", ids[:2], ids[2:4])
    shutil.rmtree(db / "tiles.lance")  # the archive embedded again, by another process (a job)
    # in two commits: this process keeps datasets open per (table, version), and a table dropped and made
    # again at a version number it had before would read as the dropped one (rsclip.table.datasets.dataset_of)
    code = ("import sys; from pathlib import Path; from tests.helpers import write_scene_table; "
            "files = [Path(p) for p in sys.argv[3:]]; db, model = Path(sys.argv[1]), Path(sys.argv[2]); "
            "write_scene_table(db, model, files[:20]); write_scene_table(db, model, files[20:])")
    subprocess.run([sys.executable, "-c", code, str(db), str(tiny_model), *map(str, files)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    positive, negative = labels.split_labels(labels.read_labels(db, "x"))
    assert set(positive) == set(ids[:2]) and set(negative) == set(ids[2:4])
    assert len(rsclip.query(db, positive=positive, negative=negative, k=5)) == 5


@pytest.mark.parametrize("call, error", [
    (lambda db, ids: labels.add_labels(db, "bad/name", [ids[0]]), "label must be"),
    (lambda db, ids: labels.add_labels(db, "x", [ids[0]], [ids[0]]), "both positive and negative"),
    (lambda db, ids: labels.add_labels(db, "x", ["f" * 32]), "not in table"),
    (lambda db, ids: labels.add_labels(db, "x", ["not-an-id"]), "not a tile id"),
    (lambda db, ids: labels.add_labels(db, "x"), "no tile ids given"),
    (lambda db, ids: labels.remove_labels(db, "never", [ids[0]]), "no label set 'never'"),
])
def test_bad_label_input_is_a_clear_error_and_writes_nothing(scene_db, call, error):
    db, ids, _ = scene_db
    with pytest.raises(InvalidInput, match=error):
        call(db, ids)
    assert labels.label_sets(db).empty


def test_example_search_uses_geovibes_vector_and_leaves_examples_out(scene_db):
    db, ids, _ = scene_db
    table = tiles.open_table(db)
    vectors = {r[tiles.ID]: np.asarray(r[tiles.VECTOR], np.float32) for r in table.to_arrow().to_pylist()}
    pos, neg = ids[:3], ids[3:5]
    want = 2 * np.mean([vectors[i] for i in pos], axis=0) - np.mean([vectors[i] for i in neg], axis=0)
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(combine(np.stack([vectors[i] for i in pos]), np.stack([vectors[i] for i in neg])),
                               want, atol=1e-6)
    hits = rsclip.query(db, positive=pos, negative=neg, k=10)
    assert len(hits) == 10 and not set(hits[tiles.ID]) & set(pos + neg)
    others = [i for i in ids if i not in pos + neg]
    expected = sorted(others, key=lambda i: -float(vectors[i] @ want))[:10]
    assert list(hits[tiles.ID]) == expected
    text = rsclip.query(db, positive=[pos[0], "a forest"], k=3)  # tile ids and texts mix
    assert len(text) == 3 and pos[0] not in set(text[tiles.ID])
    with pytest.raises(InvalidInput, match="at least one positive"):
        rsclip.query(db, negative=neg)
    with pytest.raises(InvalidInput, match="not both"):
        rsclip.query(db, "forest", positive=pos)
    with pytest.raises(NotFound, match="not in table"):
        rsclip.query(db, positive=["0" * 32])


def test_label_and_example_commands(scene_db, tmp_path, capsys):
    db, ids, _ = scene_db
    assert main(["label", "add", str(db), "ponds", "--positive", *ids[:2], "--negative", ids[2], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"label": "ponds", "written": 3}
    assert main(["label", "list", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["positives"] == 2
    assert main(["query", str(db), "--positive", *ids[:2], "--negative", ids[2], "-k", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and not {r["id"] for r in rows} & set(ids[:3])
    out = tmp_path / "labels.csv"
    assert main(["label", "export", str(db), "ponds", "--out", str(out)]) == 0
    assert out.read_text().count("\n") == 4  # header + three labelled tiles (chips: no geometry)
    assert main(["label", "remove", str(db), "ponds"]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["label", "remove", str(db), "ponds", "--all"]) == 0
    assert main(["label", "list", str(db), "ponds"]) == 2
    assert "no label set 'ponds'" in capsys.readouterr().err
