"""Distributed writes (rsclip.table.fragments): staged fragments are invisible until committed, what is never
committed is removed once its run is dead, committed files never are, keys stay unique between writers."""

from __future__ import annotations

import datetime as dt
import json
import os

import lancedb
import pyarrow as pa
import pytest

from rsclip.runtime import storage
from rsclip.table import fragments

SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("v", pa.int64())])


def rows(ids, v=0):
    return pa.table({"id": list(ids), "v": [v] * len(ids)}, schema=SCHEMA)


@pytest.fixture
def table(tmp_path):
    return lancedb.connect(tmp_path / "db").create_table("t", rows(["a0", "a1", "a2"]))


def location(table):
    return table.to_lance().uri


def data_files(table):
    return set(os.listdir(os.path.join(location(table), "data")))


def ids(table):
    table.checkout_latest()
    return sorted(table.to_arrow().column("id").to_pylist())


def ids_at(table, version):
    return sorted(fragments.open_dataset(location(table)).checkout_version(version).to_table().column("id").to_pylist())


def make_dead(run: fragments.RunRecords):
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=fragments.DEAD_AFTER_SECONDS + 60)
    storage.write_bytes(f"{run.folder}/{fragments.ALIVE}", json.dumps({"time": old.isoformat()}))


def test_staged_rows_are_invisible_until_one_commit_adds_them_and_their_record_goes(table):
    run = fragments.RunRecords(location(table)).begin()
    committer = fragments.Committer(table, "id", table.version)
    staged = [fragments.write_staged(location(table), run.run, rows([f"b{i}", f"c{i}"])) for i in range(3)]
    assert ids(table) == ["a0", "a1", "a2"]
    for s in staged:
        committer.add(s)
        assert os.path.exists(s.record)
    before = table.version
    assert committer.commit() == 6
    assert committer.known == before + 1 and committer.commits == 1  # one commit for all three
    assert ids_at(table, committer.known) == sorted(["a0", "a1", "a2"] + [f"{p}{i}" for i in range(3) for p in "bc"])
    assert ids(table) == ids_at(table, committer.known)
    assert not any(os.path.exists(s.record) for s in staged)
    run.finish()
    assert not os.path.exists(run.folder)


def test_a_commit_deletes_and_adds_in_one_version(table):
    run = fragments.RunRecords(location(table)).begin()
    committer = fragments.Committer(table, "id", table.version)
    committer.add(fragments.write_staged(location(table), run.run, rows(["a1"], v=7)))
    before = table.version
    committer.commit(delete_where="id IN ('a1', 'a2')")
    assert committer.known == before + 1 and ids_at(table, before + 1) == ["a0", "a1"]
    assert ids(table) == ["a0", "a1"]
    assert table.to_arrow().to_pydict()["v"] == [0, 7]
    run.finish()


def test_what_a_dead_run_wrote_and_never_committed_is_removed_and_nothing_else(table):
    loc = location(table)
    dead = fragments.RunRecords(loc).begin()
    dead._stop.set()  # its driver is gone: no more heartbeats
    committed = fragments.write_staged(loc, dead.run, rows(["k1"]))
    committer = fragments.Committer(table, "id", table.version)
    committer.add(committed)
    committer.commit()
    # a record of committed files left behind (the driver died before removing it): its files must stay
    storage.write_bytes(committed.record.replace(".json", "-copy.json"),
                        json.dumps({"files": [f["path"] for f in json.loads(committed.fragments[0])["files"]]}))
    orphan = fragments.write_staged(loc, dead.run, rows(["o1", "o2"]))
    orphan_files = {f["path"] for f in json.loads(orphan.fragments[0])["files"]}
    live = fragments.RunRecords(loc).begin()  # another job, running now
    in_flight = fragments.write_staged(loc, live.run, rows(["l1"]))
    in_flight_files = {f["path"] for f in json.loads(in_flight.fragments[0])["files"]}
    assert orphan_files <= data_files(table)

    fragments.RunRecords(loc).begin().finish()  # not dead yet: nothing removed
    assert orphan_files <= data_files(table)
    make_dead(dead)
    newcomer = fragments.RunRecords(loc).begin()
    assert not orphan_files & data_files(table)
    assert in_flight_files <= data_files(table), "a live run's uncommitted files were removed"
    assert not os.path.exists(dead.folder)
    assert ids(table) == ["a0", "a1", "a2", "k1"]
    assert table.to_lance().to_table().num_rows == 4  # every committed file still reads
    newcomer.finish()
    live.finish()  # its own leftovers go as it ends
    assert not in_flight_files & data_files(table)


@pytest.mark.parametrize("dies_at", ["record", "move"])
def test_a_worker_killed_inside_a_write_leaves_no_file_in_data_that_no_record_names(table, monkeypatch, dies_at):
    """Killed after its files are written but before its record, or after its record while moving them."""
    loc = location(table)
    before = data_files(table)
    run = fragments.RunRecords(loc).begin()

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(storage if dies_at == "record" else fragments, "write_bytes" if dies_at == "record"
                        else "_move", die)
    with pytest.raises(Killed):
        fragments.write_staged(loc, run.run, rows(["x1", "x2"]))
    monkeypatch.undo()
    left = data_files(table) - before
    named = {n for r in os.listdir(run.folder) if r.endswith(".json") and r != fragments.ALIVE
             for n in json.load(open(os.path.join(run.folder, r)))["files"]}
    assert left <= named and (dies_at == "move") == bool(named)
    run.finish()
    assert data_files(table) == before and not os.path.exists(run.folder) and ids(table) == ["a0", "a1", "a2"]


def test_a_record_naming_files_outside_the_data_folder_deletes_nothing_there(table, tmp_path):
    loc = location(table)
    dead = fragments.RunRecords(loc).begin()
    dead._stop.set()
    victim = tmp_path / "victim.lance"
    victim.write_text("keep me")
    names = ["../../victim.lance", str(victim), "../_versions/1.manifest", "x" * 300 + ".lance"]
    storage.write_bytes(f"{dead.folder}/evil.json", json.dumps({"files": names}))
    storage.write_bytes(f"{dead.folder}/garbage.json", b"\x00not json")
    stray = os.path.join(loc, "data", "victim0000.lance")  # named only as a key, not in a list of files
    storage.write_bytes(stray, b"keep me too")
    storage.write_bytes(f"{dead.folder}/keys.json", json.dumps({"files": {"victim0000.lance": 1}}))
    make_dead(dead)
    fragments.RunRecords(loc).begin().finish()
    assert victim.read_text() == "keep me" and os.path.exists(stray)
    assert ids(table) == ["a0", "a1", "a2"]


def test_two_writers_appending_the_same_new_keys_leave_one_row_per_key(table):
    loc = location(table)
    run = fragments.RunRecords(loc).begin()
    start = table.version
    first = fragments.Committer(lancedb.connect(os.path.dirname(loc)).open_table("t"), "id", start)
    second = fragments.Committer(lancedb.connect(os.path.dirname(loc)).open_table("t"), "id", start)
    first.add(fragments.write_staged(loc, run.run, rows(["n1", "n2", "n3"], v=1)))
    second.add(fragments.write_staged(loc, run.run, rows(["n2", "n3", "n4"], v=2)))
    first.commit()
    second.commit()  # planned against the start: finds the first writer's commit and keeps one row per key
    assert ids(table) == ["a0", "a1", "a2", "n1", "n2", "n3", "n4"]
    run.finish()


@pytest.mark.slow
def test_staged_writes_and_clean_up_on_s3(s3_prefix):
    db = lancedb.connect(f"{s3_prefix}/db", storage_options=storage.lance_storage_options())
    table = db.create_table("t", rows(["a0"]))
    loc = table.to_lance().uri
    dead = fragments.RunRecords(loc).begin()
    dead._stop.set()
    committer = fragments.Committer(table, "id", table.version)
    committer.add(fragments.write_staged(loc, dead.run, rows(["s1", "s2"])))
    committer.commit()
    orphan = fragments.write_staged(loc, dead.run, rows(["o1"]))
    name = json.loads(orphan.fragments[0])["files"][0]["path"]
    assert storage.exists(f"{loc}/data/{name}")
    make_dead(dead)
    fragments.RunRecords(loc).begin().finish()
    assert not storage.exists(f"{loc}/data/{name}")
    assert ids(table) == ["a0", "s1", "s2"]
