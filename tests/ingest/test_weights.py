"""The tile table records exactly which weights embedded it; queries refuse other weights (issue 13, item 11).

The model folder is re-exported in place (same path, other weights): the model string in the table still
matches, only the recorded sha256 tells the difference.
"""

from __future__ import annotations

import numpy as np
import pytest

import rsclip
from rsclip.app.cli import main
from rsclip.table import tiles
from rsclip.model.sources import model_identity
from rsclip.errors import ModelMismatch
from rsclip.search.query import similar_tiles
from rsclip.testing import build_tiny_clip
from tests.helpers import spread_files, write_scene_table


@pytest.fixture
def recorded(tmp_path, rsicd_files):
    """``(db, model folder, scene files)``: a table embedded by a tiny CLIP whose weights it records."""
    folder = build_tiny_clip(tmp_path / "clip", seed=0)
    db = tmp_path / "db"
    identity = model_identity(folder)
    table = tiles.create_table(db, model=str(folder), dim=32, identity=identity)
    assert tiles.table_weights(table) == identity and identity.location == str(folder.resolve())
    files = spread_files(rsicd_files, 12)
    write_scene_table(db, folder, files)
    return db, folder, files


def test_queries_refuse_weights_other_than_recorded_unless_allowed(recorded, capsys):
    db, folder, files = recorded
    assert len(rsclip.query(db, "an airport", k=3)) == 3  # the same weights: no complaint
    build_tiny_clip(folder, seed=1)  # re-exported in place: same model string, other weights
    for ask in (lambda **kw: rsclip.query(db, "an airport", k=3, **kw),
                lambda **kw: rsclip.query_text(db, "an airport", k=3, **kw),
                lambda **kw: rsclip.query(db, files[0], k=3, **kw)):
        with pytest.raises(ModelMismatch, match=r"now hold other weights.*allow_model_mismatch=True"):
            ask()
        assert len(ask(allow_model_mismatch=True)) == 3
    # stored vectors only: nothing to check
    vector = np.asarray(tiles.open_table(db).to_arrow().column(tiles.VECTOR)[0].as_py())
    assert len(rsclip.query(db, vector, k=3)) == 3
    tile = tiles.open_table(db).to_arrow().column(tiles.ID)[0].as_py()
    assert len(similar_tiles(db, tile, 3)) == 3

    capsys.readouterr()
    assert main(["query", str(db), "an airport", "-k", "2"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "rsclip: error:" in line]
    assert "now hold other weights" in line and "--allow-model-mismatch" in line, line
    assert main(["query", str(db), "an airport", "-k", "2", "--json", "--allow-model-mismatch"]) == 0


def test_a_table_without_a_record_keeps_working(tmp_path, rsicd_files):
    folder = build_tiny_clip(tmp_path / "clip", seed=0)
    write_scene_table(tmp_path / "db", folder, spread_files(rsicd_files, 6))  # no identity given
    assert tiles.table_weights(tiles.open_table(tmp_path / "db")) is None
    build_tiny_clip(folder, seed=1)
    assert len(rsclip.query(tmp_path / "db", "a beach", k=2)) == 2


def test_the_same_weights_spelled_otherwise_are_the_same_model_and_other_weights_are_not(tmp_path, monkeypatch):
    """Issue 25, item 7: a model is its recorded weights, not the spelling of its folder."""
    folder = build_tiny_clip(tmp_path / "x" / "tiny", seed=0)
    (tmp_path / "link").symlink_to(folder)
    db = tmp_path / "db"
    tiles.create_table(db, model=str(folder), dim=32, identity=model_identity(folder))
    monkeypatch.chdir(tmp_path / "x")
    for spelling in (f"{folder}/", str(tmp_path / "link"), "tiny", "./tiny/"):
        table = tiles.create_table(db, model=spelling, dim=32, identity=model_identity(spelling))
        assert tiles.table_model(table) == (str(folder), 32)  # the table keeps the name it was created with
    other = build_tiny_clip(tmp_path / "other", seed=1)
    with pytest.raises(ModelMismatch, match="holds embeddings of model"):
        tiles.create_table(db, model=str(other), dim=32, identity=model_identity(other))
    with pytest.raises(ModelMismatch, match="holds embeddings of model"):  # the same weights, another size
        tiles.create_table(db, model="tiny", dim=64, identity=model_identity("tiny"))
    build_tiny_clip(folder, seed=2)  # re-exported in place: every spelling now names other weights
    with pytest.raises(ModelMismatch, match="now hold other weights"):
        tiles.create_table(db, model=str(folder), dim=32, identity=model_identity(folder))
    for spelling in (str(tmp_path / "link"), "tiny"):
        with pytest.raises(ModelMismatch, match="refusing to add embeddings"):
            tiles.create_table(db, model=spelling, dim=32, identity=model_identity(spelling))
