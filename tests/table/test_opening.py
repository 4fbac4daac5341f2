"""rsclip.table.opening: a table that another writer is creating is opened once its first version is written (a
writer) or read as not there yet (a reader)."""

from __future__ import annotations

import threading

import lancedb
import pyarrow as pa
import pytest

from rsclip.table import opening

SCHEMA = pa.schema([("a", pa.int64())])


class _Watched:
    """A LanceDB connection that tells the test when an open of a listed table was refused."""

    def __init__(self, conn):
        self.conn, self.refused = conn, threading.Event()

    def list_tables(self):
        return self.conn.list_tables()

    def create_table(self, name, schema):
        return self.conn.create_table(name, schema=schema)

    def open_table(self, name):
        try:
            return self.conn.open_table(name)
        except ValueError:
            self.refused.set()
            raise


def _being_created(tmp_path):
    """A database where table ``t`` is listed but has no version yet: what another writer's create leaves on
    S3 for a moment (its folder before its manifest)."""
    db = tmp_path / "db"
    (db / "t.lance").mkdir(parents=True)
    return db


def test_a_table_listed_before_its_first_version_is_opened_once_it_is_written(tmp_path):
    db = _being_created(tmp_path)
    conn = _Watched(lancedb.connect(db))
    opened = {}
    waiter = threading.Thread(target=lambda: opened.update(found=opening.open_or_create(conn, "t", SCHEMA)))
    waiter.start()
    assert conn.refused.wait(timeout=120), "the open never found the table missing"
    lancedb.connect(db).create_table("t", data=pa.table({"a": [1, 2]}))  # the other writer's first version
    waiter.join(timeout=120)
    table, created = opened["found"]
    assert not created and table.count_rows() == 2


def test_a_table_listed_but_never_written_is_not_waited_for_forever(tmp_path, monkeypatch):
    monkeypatch.setattr(opening, "CREATED_ELSEWHERE_SECONDS", 0.0)
    with pytest.raises(ValueError, match="not found"):
        opening.open_or_create(lancedb.connect(_being_created(tmp_path)), "t", SCHEMA)


def test_a_missing_table_is_created_and_an_existing_one_opened(tmp_path):
    conn = lancedb.connect(tmp_path / "db")
    first, created = opening.open_or_create(conn, "t", SCHEMA)
    first.add(pa.table({"a": [7]}))
    again, created_again = opening.open_or_create(conn, "t", SCHEMA)
    assert (created, created_again) == (True, False) and again.to_arrow().column("a").to_pylist() == [7]


def test_a_reader_finds_a_table_being_created_not_there_yet(tmp_path):
    db = _being_created(tmp_path)
    assert opening.open_if_created(lancedb.connect(db), "t") is None  # listed, no version: no rows to read
    assert opening.open_if_created(lancedb.connect(db), "absent") is None
    lancedb.connect(db).create_table("t", data=pa.table({"a": [1, 2]}))
    assert opening.open_if_created(lancedb.connect(db), "t").count_rows() == 2


def test_a_companion_table_being_created_reads_as_none(tmp_path):
    from rsclip.table import rows

    db = _being_created(tmp_path)
    assert rows.open_companion(str(db), "t", SCHEMA) is None  # a reader: no rows yet, no error, no wait


def test_info_counts_no_errors_while_the_errors_table_is_being_created(tmp_path):
    import numpy as np

    from rsclip.search.info import table_info
    from rsclip.table import tiles
    from tests.helpers.vectors import clustered, tile_rows, unit_centers

    rng = np.random.default_rng(0)
    tiles.add_tiles(tiles.create_table(tmp_path / "db", model="none", dim=8),
                    tile_rows(0, clustered(rng, 5, unit_centers(rng, 2, 8)), rng))
    (tmp_path / "db" / f"{tiles.errors_table_name(tiles.DEFAULT_TABLE)}.lance").mkdir()  # listed, no version
    info = table_info(tmp_path / "db")
    assert info["rows"] == 5 and info["errors"] is None
