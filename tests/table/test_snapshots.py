"""rsclip.table.snapshots: tables opened for reading are kept while no version is committed after them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import rsclip
from rsclip.errors import NotFound
from rsclip.table import snapshots, tiles


def _rows(first: int, n: int, dim: int = 8):
    vectors = np.random.default_rng(first).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return dict(uri=[f"s3://b/{i}.jpg" for i in range(first, first + n)], x=[0] * n, y=[0] * n, width=[224] * n,
                height=[224] * n, vector=vectors)


def _table(db, n: int):
    table = tiles.create_table(db, model="m", dim=8)
    tiles.add_tiles(table, _rows(0, n))
    return table


def test_one_snapshot_is_read_until_a_version_is_committed_after_it(tmp_path):
    db = str(tmp_path / "db")
    writer = _table(db, 10)
    first = snapshots.read_table(db, tiles.DEFAULT_TABLE)
    assert snapshots.read_table(db, tiles.DEFAULT_TABLE) is first
    assert first.version == writer.version and first.count_rows() == 10
    assert tiles.table_model(first) == ("m", 8)

    added = _rows(10, 5)
    tiles.add_tiles(writer, added)
    second = snapshots.read_table(db, tiles.DEFAULT_TABLE)
    assert second is not first and second.version == writer.version and second.count_rows() == 15
    assert first.count_rows() == 10  # a snapshot in use stays what it was
    # a search sees the commit on its next call
    probe = added["vector"][2]
    found = rsclip.query(db, probe, k=1, exclude_self=False)
    assert found["uri"].tolist() == ["s3://b/12.jpg"]


def test_a_snapshot_refuses_writes(tmp_path):
    db = str(tmp_path / "db")
    _table(db, 3)
    snapshot = snapshots.read_table(db, tiles.DEFAULT_TABLE)
    for write in ("add", "merge_insert", "delete", "checkout_latest", "create_index"):
        with pytest.raises(AttributeError, match="opened for reading"):
            getattr(snapshot, write)
    assert snapshot.count_rows() == 3


def test_a_table_dropped_or_created_again_is_not_read_from_an_old_snapshot(tmp_path):
    db = str(tmp_path / "db")
    _table(db, 20)
    old = snapshots.read_table(db, tiles.DEFAULT_TABLE)
    tiles.connect(db).drop_table(tiles.DEFAULT_TABLE)
    with pytest.raises(NotFound, match="unknown table"):
        snapshots.read_table(db, tiles.DEFAULT_TABLE)

    writer, rows = _table(db, 1), 1
    while writer.version < old.version:  # as many commits again: the same version number, other rows
        tiles.add_tiles(writer, _rows(100 + rows, 1))
        rows += 1
    fresh = snapshots.read_table(db, tiles.DEFAULT_TABLE)
    assert fresh.version == old.version and fresh.count_rows() == rows < 20

    shutil.rmtree(db)
    with pytest.raises(NotFound, match="no database"):
        snapshots.read_table(db, tiles.DEFAULT_TABLE)


def test_a_connection_is_opened_afresh(tmp_path):
    db = tmp_path / "db"
    _table(db, 4)
    conn = tiles.connect(db)
    assert snapshots.read_table(conn, tiles.DEFAULT_TABLE).count_rows() == 4
    assert snapshots.read_table(db, tiles.DEFAULT_TABLE).count_rows() == 4  # a path as well as its text
