"""rsclip.store: schema, metadata, exactly-once appends, local and s3:// tables."""

from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pyarrow as pa
import pytest

from rsclip.table import tiles


# the columns of the first tile tables (rsclip 0.1), which later versions upgrade in place
LEGACY_COLUMNS = ("id", "uri", "x", "y", "width", "height", "lon_min", "lat_min", "lon_max", "lat_max", "crs", "vector")


def _rows(uris, dim=8, seed=0, bounds=True):
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(len(uris), dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    n = len(uris)
    rows = dict(uri=list(uris), x=[0] * n, y=list(range(n)), width=[224] * n, height=[224] * n, vector=vec)
    if bounds:
        lon = rng.uniform(-170, 170, n)
        lat = rng.uniform(-80, 80, n)
        rows.update(lon_min=lon, lat_min=lat, lon_max=lon + 0.1, lat_max=lat + 0.1, crs=["EPSG:32618"] * n)
    return rows


def test_tile_id_is_a_pure_function_of_uri_and_window():
    a = tiles.tile_id("s3://b/scene.tif", 0, 224, 224, 224)
    assert a == tiles.tile_id("s3://b/scene.tif", 0, 224, 224, 224)
    assert len(a) == 32 and int(a, 16) >= 0
    others = {
        tiles.tile_id("s3://b/scene.tif", 224, 0, 224, 224),
        tiles.tile_id("s3://b/scene.tif", 0, 224, 224, 223),
        tiles.tile_id("s3://b/scene2.tif", 0, 224, 224, 224),
        tiles.tile_id("s3://b/scene.tif0", 224, 224, 224, 224),
    }
    assert a not in others and len(others) == 4


def test_schema_and_metadata(tmp_path):
    table = tiles.create_table(tmp_path / "db", model="some/model", dim=8)
    assert tiles.table_model(table) == ("some/model", 8)
    reopened = tiles.open_table(tmp_path / "db")
    assert tiles.table_model(reopened) == ("some/model", 8)
    assert list(reopened.schema.names) == list(tiles.COLUMNS)
    assert str(reopened.schema.field(tiles.VECTOR).type) == "fixed_size_list<item: float>[8]"
    # reopening with the same model is fine; another model or size is refused
    tiles.create_table(tmp_path / "db", model="some/model", dim=8)
    with pytest.raises(ValueError, match="refusing"):
        tiles.create_table(tmp_path / "db", model="other/model", dim=8)
    with pytest.raises(ValueError, match="refusing"):
        tiles.create_table(tmp_path / "db", model="some/model", dim=16)
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        tiles.open_table(tmp_path / "db", "nope")


def test_round_trip_and_rewrites_add_nothing(tmp_path):
    table = tiles.create_table(tmp_path / "db", model="m", dim=8)
    rows = _rows([f"s3://b/{i}.jpg" for i in range(20)])
    assert tiles.add_tiles(table, rows) == 20
    assert tiles.add_tiles(table, rows) == 0
    assert table.count_rows() == 20
    # a batch overlapping the table and repeating itself adds only its new ids, once
    more = _rows([f"s3://b/{i}.jpg" for i in range(15, 30)] * 2, seed=1)
    more["y"] = [i - 15 if i < 30 else 0 for i in range(15, 30)] * 2
    added = tiles.add_tiles(table, more)
    frame = table.to_pandas()
    assert frame["id"].is_unique and len(frame) == 20 + added
    got = frame.set_index("id").loc[tiles.tile_id("s3://b/3.jpg", 0, 3, 224, 224)]
    assert got["uri"] == "s3://b/3.jpg" and got["crs"] == "EPSG:32618"
    np.testing.assert_allclose(got["vector"], rows["vector"][3])
    assert got["lon_min"] == pytest.approx(rows["lon_min"][3])
    assert tiles.existing_ids(table, [tiles.tile_id("s3://b/3.jpg", 0, 3, 224, 224), "nope"]) == {
        tiles.tile_id("s3://b/3.jpg", 0, 3, 224, 224)
    }


def test_keyed_writes_index_their_key_so_the_merge_does_not_hold_every_key(tmp_path):
    """Every keyed write goes through keyed_writes.merge_on, which gives the key column a BTREE index once the table
    has rows (the driver's memory stays flat as tables grow: BENCHMARKS.md "Detection"); the merge stays
    exact for rows written after the index."""
    from rsclip.table import detections

    def indexed(table, column):
        return [c.index_type for c in table.list_indices() if list(c.columns) == [column]]

    table = tiles.create_table(tmp_path / "db", model="m", dim=8)
    assert indexed(table, tiles.ID) == []  # an empty table: nothing to index yet
    rows = _rows([f"s3://b/{i}.jpg" for i in range(15)])
    assert tiles.add_tiles(table, {c: v[:10] for c, v in rows.items()}) == 10
    assert indexed(table, tiles.ID) == ["BTree"]
    assert tiles.add_tiles(table, rows) == 5  # found through the index (first 10) or the new rows' scan
    assert tiles.add_tiles(table, rows) == 0
    assert table.count_rows() == 15 and table.to_pandas()[tiles.ID].is_unique

    frame = table.to_pandas()
    target = detections.open_detections(tmp_path / "db", create=True)
    for score in (0.2, 0.7):  # the second write replaces the first, row for row
        detections.upsert(target, _detections(list(frame[tiles.ID]), score))
        assert indexed(target, detections.KEY) == ["BTree"]
    written = target.to_pandas()
    assert len(written) == 15 and np.allclose(written[detections.SCORE], 0.7)


def _detections(ids: list[str], score: float) -> pa.Table:
    """Detection rows of label ``x`` for tiles ``ids`` (no bounds), all scored ``score``."""
    from rsclip.table import detections

    n = len(ids)
    return pa.Table.from_pydict({
        detections.KEY: [detections.detection_key("x", i) for i in ids], tiles.ID: ids, detections.LABEL: ["x"] * n,
        detections.MODEL_VERSION: ["v"] * n, detections.SCORE: np.full(n, score, np.float32),
        detections.LOGIT: np.full(n, np.log(score / (1 - score))), **{c: [None] * n for c in tiles.BOUNDS_COLUMNS}, detections.TIME: [dt.datetime.now(dt.timezone.utc)] * n,
    }, schema=detections.DETECTIONS_SCHEMA)


RACE_TABLES, RACE_KEYS = 4, 200


def _merge_the_same_new_keys(db: str, barrier, score: float) -> None:
    """One of two writer processes: into each of :data:`RACE_TABLES` fresh detections tables, merge the same
    new keys as the other, both released by the barrier."""
    from rsclip.table import detections

    for n in range(RACE_TABLES):
        target = detections.open_detections(db, f"tiles{n}", create=True)
        barrier.wait(timeout=300)
        detections.upsert(target, _detections([f"tile-{n}-{i}" for i in range(RACE_KEYS)], score))


def _race(db: str) -> None:
    import multiprocessing

    from rsclip.table import detections, keyed_writes

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    writers = [ctx.Process(target=_merge_the_same_new_keys, args=(db, barrier, s)) for s in (0.25, 0.75)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=600)
    assert [w.exitcode for w in writers] == [0, 0]
    for n in range(RACE_TABLES):
        target = detections.open_detections(db, f"tiles{n}")
        written = target.to_pandas()
        assert len(written) == RACE_KEYS and written[detections.KEY].is_unique, f"tiles{n}: {len(written)} rows"
        assert keyed_writes.PRIMARY_KEY_POSITION in target.schema.field(detections.KEY).metadata


def test_writers_inserting_the_same_new_keys_at_once_leave_one_row_per_key(tmp_path):
    """Two processes writing the same new keys into a fresh table at the same moment: Lance lets both commit
    them (two rows per key) unless the key is the table's declared primary key, which keyed_writes.merge_on
    declares; then the later commit conflicts and its retry finds the keys present. (Once the key's index
    exists, pylance 14 does not record the keys an indexed merge inserts: see keyed_writes.declare_key.)"""
    _race(str(tmp_path / "db"))


def test_writers_inserting_the_same_new_keys_on_s3_leave_one_row_per_key(s3_prefix):
    _race(s3_prefix + "/db")


def test_a_writer_reading_an_older_version_does_not_insert_a_key_twice(tmp_path, caplog):
    """Two handles of one indexed table: one inserts new keys, then the other, still at the version before,
    merges the same keys. pylance 14 does not check the keys of an indexed merge (keyed_writes.declare_key), so
    both insert; the second writer sees the commit between its read and its own and keeps the last row of
    each key, its own (what a merge that saw the first rows would have left)."""
    from rsclip.table import detections, keyed_writes

    first = detections.open_detections(tmp_path / "db", create=True)
    detections.upsert(first, _detections(["seed"], 0.5))  # the key's index is built after the first rows
    second = detections.open_detections(tmp_path / "db")
    assert [list(c.columns) for c in second.list_indices()] == [[detections.KEY]]
    ids = [f"tile-{i}" for i in range(50)]
    detections.upsert(first, _detections(ids, 0.25))
    with caplog.at_level("WARNING", logger="rsclip.table.keyed_writes"):
        detections.upsert(second, _detections(ids, 0.75))
    keys = [detections.detection_key("x", i) for i in ids]
    written = detections.open_detections(tmp_path / "db").to_pandas().set_index(detections.KEY)
    assert len(written) == 51 and written.index.is_unique
    assert np.allclose(written.loc[keys, detections.SCORE], 0.75)
    assert "removed 50 earlier row(s) of key values that another writer inserted meanwhile" in caplog.text
    assert keyed_writes.drop_duplicate_keys(second, detections.KEY, pa.array(keys)) == 0  # nothing left to remove


def test_a_key_that_cannot_be_declared_is_written_as_before(tmp_path, caplog):
    """A table of an older rsclip whose key column is nullable cannot declare it: the merge still works, with
    a warning naming the table; a row without a key is refused by name."""
    import lancedb

    from rsclip.table import keyed_writes
    from rsclip.errors import InvalidInput

    schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.int64())])
    table = lancedb.connect(tmp_path / "db").create_table("old", schema=schema)
    with caplog.at_level("WARNING", logger="rsclip.table.keyed_writes"):
        keyed_writes.merge_on(table, "key", pa.table({"key": ["a", "b"], "value": [1, 2]}))
        keyed_writes.merge_on(table, "key", pa.table({"key": ["b", "c"], "value": [3, 4]}))
    assert sorted(table.to_pandas().itertuples(index=False)) == [("a", 1), ("b", 3), ("c", 4)]
    assert "old: key cannot be declared its primary key" in caplog.text
    with pytest.raises(InvalidInput, match="1 row\\(s\\) to write have no key"):
        keyed_writes.merge_on(table, "key", pa.table({"key": ["d", None], "value": [5, 6]}))
    assert table.count_rows() == 3


def test_every_keyed_table_declares_its_key(tmp_path):
    """Tiles, error rows, labels, detections and their progress: each keyed table rsclip writes has its key
    declared after the first write."""
    from rsclip.table import detections, keyed_writes, labels
    from rsclip.ingest import writer

    db = tmp_path / "db"
    table = tiles.create_table(db, model="m", dim=8)
    tiles.add_tiles(table, _rows(["s3://b/a.jpg", "s3://b/b.jpg"]))
    ids = list(table.to_pandas()[tiles.ID])
    errors = writer.open_errors_table(db, tiles.DEFAULT_TABLE)
    writer.record_errors(errors, [{tiles.URI: "s3://b/c.jpg", writer.STAGE: "decode", writer.MESSAGE: "broken",
                                   tiles.X: 0, tiles.Y: 0, tiles.WIDTH: 1, tiles.HEIGHT: 1}])
    labels.add_labels(db, "x", positive=ids[:1], negative=ids[1:])
    detections.upsert(detections.open_detections(db, create=True), _detections(ids, 0.5))
    progress = detections.open_progress(db, create=True)
    detections.record_part(progress, "x", "v", "part-0", 2)
    keyed = [(table, tiles.ID), (errors, tiles.ID), (labels.open_labels(db), labels.KEY),
             (detections.open_detections(db), detections.KEY), (progress, detections.KEY)]
    for target, key in keyed:
        target.checkout_latest()
        assert keyed_writes.PRIMARY_KEY_POSITION in (target.schema.field(key).metadata or {}), target.name


def test_chips_without_georeference_have_null_bounds(tmp_path):
    table = tiles.create_table(tmp_path / "db", model="m", dim=8)
    tiles.add_tiles(table, _rows(["a.jpg", "b.jpg"], bounds=False))
    frame = table.to_pandas()
    assert frame[list(tiles.BOUNDS_COLUMNS)].isna().all().all() and frame["crs"].isna().all()


def test_bad_rows_are_refused(tmp_path):
    table = tiles.create_table(tmp_path / "db", model="m", dim=8)
    rows = _rows(["a.jpg"])
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        tiles.add_tiles(table, {**rows, "vector": np.ones((1, 4), dtype=np.float32) / 2})
    with pytest.raises(ValueError, match="normalised"):
        tiles.add_tiles(table, {**rows, "vector": np.ones((1, 8), dtype=np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        tiles.add_tiles(table, {**rows, "vector": np.full((1, 8), np.nan, dtype=np.float32)})
    with pytest.raises(ValueError, match="lack columns: uri"):
        tiles.add_tiles(table, {k: v for k, v in rows.items() if k != "uri"})
    assert table.count_rows() == 0


def test_s3_table_and_concurrent_writers(s3_prefix):
    db = s3_prefix + "/db"
    table = tiles.create_table(db, model="m", dim=8)
    batches = [_rows([f"s3://b/w{w}/{i}.jpg" for i in range(25)], seed=w) for w in range(2)]
    errors = []

    def write(rows):
        try:
            t = tiles.open_table(db)
            for i in range(0, 25, 5):
                tiles.add_tiles(t, {k: v[i : i + 5] for k, v in rows.items()})
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table.checkout_latest()
    frame = tiles.open_table(db).to_pandas()
    assert len(frame) == 50 and frame["id"].is_unique
    assert tiles.table_model(tiles.open_table(db)) == ("m", 8)


def test_a_new_source_version_replaces_the_tile_and_stale_tiles_of_the_object_go(tmp_path):
    from rsclip.table import source_versions

    table = tiles.create_table(tmp_path / "db", model="m", dim=8)
    uris = ["s3://b/a.jpg", "s3://b/o'dd\\name.jpg", "s3://b/c.jpg"]
    rows = {**_rows(uris), tiles.SOURCE_VERSION: ["v1"] * 3}
    assert tiles.add_tiles(table, rows) == 3
    assert tiles.add_tiles(table, rows) == 0  # same ids, same versions: nothing written
    ids = [tiles.tile_id(u, 0, i, 224, 224) for i, u in enumerate(uris)]
    assert tiles.existing_versions(table, [*ids, "nope"]) == dict.fromkeys(ids, "v1")

    # a.jpg rewritten in place: same window, new version, new vector; a row without a version replaces nothing
    new = {**_rows(uris[:1], seed=7), tiles.SOURCE_VERSION: ["v2"]}
    assert tiles.add_tiles(table, new) == 1
    assert tiles.add_tiles(table, {**_rows(uris[1:2], seed=8), "y": [1], tiles.SOURCE_VERSION: [None]}) == 0
    frame = table.to_pandas().set_index("id")
    assert len(frame) == 3 and frame.loc[ids[0], tiles.SOURCE_VERSION] == "v2"
    np.testing.assert_allclose(frame.loc[ids[0], "vector"], new["vector"][0])
    np.testing.assert_allclose(frame.loc[ids[1], "vector"], rows["vector"][1])

    # the odd name got smaller: its new window is written, the old one is stale
    smaller = {**_rows(uris[1:2], seed=9), "width": [100], tiles.SOURCE_VERSION: ["v3"]}
    tiles.add_tiles(table, smaller)
    listed = {uris[0]: "v2", uris[1]: "v3", uris[2]: "v1"}
    other = lambda: [(t, u) for t, u, v in source_versions.stored_of(table, listed) if v != listed[u]]  # noqa: E731
    assert other() == [(ids[1], uris[1])]
    assert len(source_versions.stored_of(table, uris[1:2])) == 2 and source_versions.stored_of(table, ["s3://b/none.jpg"]) == []
    assert source_versions.remove_tiles(table, [ids[1]]) == 1
    left = table.to_pandas()
    assert sorted(left[tiles.URI]) == sorted(uris) and set(left[tiles.SOURCE_VERSION]) == {"v1", "v2", "v3"}
    assert other() == []


def test_an_old_table_is_upgraded_in_place_and_its_weights_are_recorded_then_enforced(tmp_path):
    import lancedb
    import pyarrow as pa

    from rsclip.table import source_versions
    from rsclip.model.sources import ModelIdentity

    new = tiles.tile_schema(8, "m")  # a table of rsclip 0.1: no source versions, footprints, weights
    old = pa.schema([f for f in new if f.name in LEGACY_COLUMNS], metadata=new.metadata)
    legacy = lancedb.connect(tmp_path / "db").create_table("tiles", schema=old)
    rows = _rows(["a.jpg", "b.jpg"])
    legacy.add(tiles.tiles_to_arrow(rows, old))
    # reading it needs no upgrade
    reader = tiles.open_table(tmp_path / "db")
    assert tiles.table_weights(reader) is None and set(tiles.existing_versions(reader, [])) == set()
    assert [(u, v) for _, u, v in source_versions.stored_of(reader, ["a.jpg"])] == [("a.jpg", None)]

    weights = ModelIdentity("/models/m", "ab" * 32)
    table = tiles.create_table(tmp_path / "db", model="m", dim=8, identity=weights)
    assert list(table.schema.names) == list(tiles.COLUMNS)
    assert tiles.table_weights(tiles.open_table(tmp_path / "db")) == weights
    frame = table.to_pandas()
    assert len(frame) == 2 and frame[tiles.SOURCE_VERSION].isna().all()
    np.testing.assert_allclose(np.stack(frame["vector"]), rows["vector"])
    version = table.version
    tiles.create_table(tmp_path / "db", model="m", dim=8, identity=weights)  # up to date: no new version
    assert tiles.open_table(tmp_path / "db").version == version

    # versions recorded for the tiles taken as they are (no re-embedding): only that column changes; the
    # unversioned tiles left over of a file whose grid changed go
    ids = list(frame["id"])
    assert source_versions.record_versions(table, {ids[0]: "v1"}) == 1
    assert tiles.existing_versions(table, ids) == {ids[0]: "v1", ids[1]: None}
    after = table.to_pandas().set_index(tiles.URI).loc[rows["uri"]]  # an update moves the row: compare by uri
    np.testing.assert_allclose(np.stack(after["vector"]), rows["vector"])
    assert source_versions.remove_unversioned(table, ["a.jpg", "b.jpg"]) == 1
    assert tiles.existing_versions(table, ids) == {ids[0]: "v1"}

    # the same model name resolving to other weights (a folder re-exported in place) is refused
    with pytest.raises(ValueError, match="other weights"):
        tiles.create_table(tmp_path / "db", model="m", dim=8, identity=ModelIdentity("/models/m", "cd" * 32))
    assert tiles.create_table(tmp_path / "db", model="m", dim=8).count_rows() == 1  # no identity given: API use
