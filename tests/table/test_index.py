"""Index upkeep: IVF_SQ for the dot product, BTREE on id and bounds, appended rows searchable, refresh, S3."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import rsclip
from rsclip.table import index as rindex
from rsclip.table import tiles
from rsclip.search import memory_table, searchers
from rsclip.search.filters import Filters
from tests.helpers.vectors import clustered, tile_rows


DIM = 32
N_ROWS = 3000


@pytest.fixture
def synthetic_db(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    db = tmp_path / "db"
    table = tiles.create_table(db, model=str(tiny_model), dim=DIM)
    tiles.add_tiles(table, tile_rows(0, clustered(rng, N_ROWS, centers), rng))
    return db, rng, centers


def exact_ids(db, q, k, mask=None):
    frame = tiles.open_table(db).to_pandas()
    if mask is not None:
        frame = frame[mask(frame)]
    scores = np.stack(frame["vector"].to_numpy()) @ q
    return frame.iloc[np.argsort(-scores, kind="stable")[:k]]["id"].tolist()


def test_ivf_lists():
    assert rindex.ivf_lists(1_000_000) == 1000
    assert rindex.ivf_lists(3000) == 11  # one list per 256 rows at most, as Lance trains
    assert rindex.ivf_lists(100_000) == 316
    assert rindex.ivf_lists(10) == 1
    assert rindex.ivf_lists(10**9) == 4096
    with pytest.raises(ValueError):
        rindex.ivf_lists(0)


def test_build_gives_a_dot_product_ivf_sq_and_btrees_and_keeps_recall(synthetic_db):
    db, rng, centers = synthetic_db
    state = rsclip.build_index(db, min_rows=1000)
    assert "IVF_SQ" in state.action and state.indexed_rows == N_ROWS and state.unindexed_rows == 0
    assert set(state.scalar_indexes) == {"id", "uri", "lon_min", "lat_min", "lon_max", "lat_max", "datetime"}
    assert state.num_sub_vectors is None and state.num_partitions == rindex.ivf_lists(N_ROWS)
    table = tiles.open_table(db)
    vec = [c for c in table.list_indices() if list(c.columns) == ["vector"]][0]
    assert table.index_stats(vec.name).distance_type == rindex.INDEX_METRIC
    queries = clustered(rng, 30, centers)
    hits = [len(set(rsclip.query(db, q, k=10)["id"]) & set(exact_ids(db, q, 10))) for q in queries]
    assert np.mean(hits) / 10 >= 0.95


def test_appended_rows_are_searchable_before_and_after_refresh(synthetic_db):
    db, rng, centers = synthetic_db
    rindex.build_index(db, min_rows=1000)
    new = clustered(rng, 50, centers, spread=1.5)  # unlike anything indexed
    tiles.add_tiles(tiles.open_table(db), tile_rows(N_ROWS, new, rng))
    state = rindex.index_state(tiles.open_table(db))
    assert state.unindexed_rows == 50 and state.indexed_rows == N_ROWS
    for i in (0, 17, 49):
        got = rsclip.query(db, new[i], k=1)
        assert got["uri"].iloc[0] == f"s3://archive/scene-{N_ROWS + i}.tif"
    state = rindex.build_index(db, min_rows=1000)
    assert "refreshed" in state.action and state.unindexed_rows == 0 and state.indexed_rows == N_ROWS + 50
    assert rsclip.query(db, new[17], k=1)["uri"].iloc[0] == f"s3://archive/scene-{N_ROWS + 17}.tif"


def test_build_and_refresh_keep_the_planned_lists(synthetic_db):
    """The regression of issue 22: a table written by keyed merges has a BTREE index on id before its vector
    index is built, and a refresh through Lance's default optimize re-partitioned the new IVF index to Lance's
    own list size (55 lists -> 1 here, 1,000 -> 31 at 1M rows: recall@10 0.99 -> 0.89)."""
    db, rng, centers = synthetic_db
    assert "id" in rindex.index_state(tiles.open_table(db)).scalar_indexes  # what the keyed writes leave
    planned = rindex.ivf_lists(N_ROWS)
    assert rindex.build_index(db, min_rows=1000).num_partitions == planned
    tiles.add_tiles(tiles.open_table(db), tile_rows(N_ROWS, clustered(rng, 200, centers), rng))
    state = rindex.build_index(db, min_rows=1000)
    assert state.action == "refreshed" and state.unindexed_rows == 0
    assert state.num_partitions == planned


def test_an_index_that_lance_re_partitioned_is_retrained(synthetic_db):
    db, _, _ = synthetic_db
    planned = rindex.ivf_lists(N_ROWS)
    rindex.build_index(db, min_rows=1000)
    table = tiles.open_table(db)
    table.optimize()  # LanceDB's own optimize, as a user may call it: pylance 14 joins the small lists
    assert rindex.vector_partitions(table) < planned * rindex.RETRAIN_PARTITION_SHARE
    state = rindex.build_index(db, min_rows=1000)
    assert state.action.startswith("built IVF_SQ") and state.num_partitions == planned


def test_large_growth_retrains_and_rebuild_flag(synthetic_db):
    db, rng, centers = synthetic_db
    rindex.build_index(db, min_rows=1000)
    tiles.add_tiles(tiles.open_table(db), tile_rows(N_ROWS, clustered(rng, N_ROWS + 10, centers), rng))
    state = rindex.build_index(db, min_rows=1000)
    assert "built IVF_SQ" in state.action and state.unindexed_rows == 0
    assert rindex.build_index(db, min_rows=1000, rebuild=True).action.startswith("built IVF_SQ")


def test_small_table_gets_scalar_indexes_only(synthetic_db):
    db, _, _ = synthetic_db
    state = rindex.build_index(db)  # default MIN_ANN_ROWS > 3000
    assert state.vector_index is None and "exact scan" in state.action
    assert set(state.scalar_indexes) == set(rindex.SCALAR_COLUMNS)
    assert rindex.build_index(db).vector_index is None  # idempotent


def test_empty_and_unknown_tables(tiny_model, tmp_path):
    tiles.create_table(tmp_path / "db", model=str(tiny_model), dim=DIM)
    assert rindex.build_index(tmp_path / "db").action.startswith("empty table")
    with pytest.raises(ValueError, match="unknown table"):
        rindex.build_index(tmp_path / "db", "nope")
    with pytest.raises(ValueError, match="min_rows"):
        rindex.build_index(tmp_path / "db", min_rows=0)


def test_filtered_search_with_index_is_exact_or_complete(synthetic_db, monkeypatch):
    db, rng, centers = synthetic_db
    rindex.build_index(db, min_rows=1000)
    table = tiles.open_table(db)
    box = (-60.0, -40.0, 60.0, 40.0)
    mask = lambda f: (f.lon_min <= box[2]) & (f.lon_max >= box[0]) & (f.lat_min <= box[3]) & (f.lat_max >= box[1])
    q = clustered(rng, 1, centers)[0]
    # a selective filter is answered by an exact scan of the rows it keeps
    assert rsclip.query(db, q, k=20, bbox=box)["id"].tolist() == exact_ids(db, q, 20, mask)
    # through the index (forced): k rows, all inside the box, nearly all of the true ones
    monkeypatch.setattr(memory_table, "EXACT_ROWS", 0)
    got = searchers.search(searchers.LanceSearcher(table), q, 20, Filters.of(bbox=box))
    assert len(got) == 20 and mask(got).all()
    assert len(set(got["id"]) & set(exact_ids(db, q, 20, mask))) >= 18


def test_resident_search_through_the_index_ranks_exactly_and_follows_new_versions(synthetic_db, monkeypatch,
                                                                                  index_small_tables):
    db, rng, centers = synthetic_db
    rindex.build_index(db, min_rows=1000)
    queries = clustered(rng, 30, centers)
    hits = [len(set(rsclip.query(db, q, k=10, resident=True)["id"]) & set(exact_ids(db, q, 10))) for q in queries]
    assert np.mean(hits) / 10 >= 0.95
    # same rows and columns as Lance gives; the scores are exact cosines of the full vectors
    frame = tiles.open_table(db).to_pandas().set_index("id")
    got = rsclip.query(db, queries[0], k=10, resident=True)
    lance = rsclip.query(db, queries[0], k=10).set_index("id")
    common = [i for i in got["id"] if i in lance.index]
    assert len(common) >= 9
    pd.testing.assert_frame_equal(got.set_index("id").loc[common].drop(columns="score"),
                                  lance.loc[common].drop(columns="score"))
    exact = np.stack(frame.loc[got["id"], "vector"].to_numpy()) @ queries[0]
    np.testing.assert_allclose(got["score"].to_numpy(), exact, atol=1e-5)
    # rows appended after indexing are a new version: loaded, and found before re-indexing
    new = clustered(rng, 50, centers, spread=1.5)
    tiles.add_tiles(tiles.open_table(db), tile_rows(N_ROWS, new, rng))
    for i in (0, 17, 49):
        assert rsclip.query(db, new[i], k=1, resident=True)["uri"].iloc[0] == f"s3://archive/scene-{N_ROWS + i}.tif"
    assert len(memory_table.cache) <= memory_table.KEEP
    # a box: ranked in memory when it keeps few rows, through the prefiltered index when it keeps many
    box = (-60.0, -40.0, 60.0, 40.0)
    mask = lambda f: (f.lon_min <= box[2]) & (f.lon_max >= box[0]) & (f.lat_min <= box[3]) & (f.lat_max >= box[1])
    q = queries[1]
    assert rsclip.query(db, q, k=20, bbox=box, resident=True)["id"].tolist() == exact_ids(db, q, 20, mask)
    monkeypatch.setattr(searchers, "RESIDENT_EXACT_ROWS", 0)
    got = rsclip.query(db, q, k=20, bbox=box, where="uri LIKE '%1.tif'", resident=True)
    want = exact_ids(db, q, 20, lambda f: mask(f) & f.uri.str.endswith("1.tif"))
    assert len(got) == 20 and mask(got).all() and got["uri"].str.endswith("1.tif").all()
    assert len(set(got["id"]) & set(want)) >= 18


def test_index_on_s3(tiny_model, s3_prefix):
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(10, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    db = s3_prefix + "/db"
    tiles.add_tiles(tiles.create_table(db, model=str(tiny_model), dim=DIM), tile_rows(0, clustered(rng, 1200, centers), rng))
    state = rindex.build_index(db, min_rows=1000)
    assert state.indexed_rows == 1200 and state.vector_index
    q = clustered(rng, 1, centers)[0]
    assert len(set(rsclip.query(db, q, k=10)["id"]) & set(exact_ids(db, q, 10))) >= 9


def test_concurrent_index_builds_on_one_table_both_succeed(synthetic_db):
    """Two jobs finishing on one table index it at once; Lance rejects one commit, which is retried."""
    import threading

    db, _, _ = synthetic_db
    results, errors = [], []

    def build():
        try:
            results.append(rindex.build_index(db, min_rows=256))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    state = rindex.index_state(tiles.open_table(db))
    assert state.vector_index is not None and set(state.scalar_indexes) == set(rindex.SCALAR_COLUMNS)


GUARD_ROWS = 1_000_000  # the collapse of issue 22 costs recall from ~650k rows up (0.89 at 1M), latency below
# 128-d, not CLIP's 512: the collapse is in the IVF lists, whatever the width (the old last step, LanceDB's
# optimize(), gives recall@10 0.918 on this table, measured), at a third of the time and 4 GB instead of 12.
GUARD_DIM = 128


def job_batches(rows: int, batch_rows: int, rng):
    """What the embedding pipeline hands its writer: EMBEDDED rows of unit vectors drawn from 1,000
    clusters (like an archive of many scene types), one tile a file; yields ``(batch, vectors)``."""
    from rsclip.ingest import batch as B

    centers = rng.standard_normal((1000, GUARD_DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        v = centers[rng.integers(0, 1000, n)] + rng.standard_normal((n, GUARD_DIM), dtype=np.float32) * (
            0.8 / np.sqrt(GUARD_DIM))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        uris = np.array([f"s3://archive/scene-{i:07d}.tif" for i in range(start, start + n)])
        lon = rng.uniform(-170, 170, n)
        yield {
            B.STATUS: np.full(n, B.EMBEDDED), B.STAGE: np.full(n, ""), B.MESSAGE: np.full(n, ""),
            tiles.ID: np.array([tiles.tile_id(u, 0, 0, 224, 224) for u in uris]), tiles.URI: uris,
            tiles.X: np.zeros(n, np.int32), tiles.Y: np.zeros(n, np.int32),
            tiles.WIDTH: np.full(n, 224, np.int32), tiles.HEIGHT: np.full(n, 224, np.int32),
            tiles.LON_MIN: lon, tiles.LAT_MIN: lon / 3, tiles.LON_MAX: lon + 0.01, tiles.LAT_MAX: lon / 3 + 0.01,
            tiles.CRS: np.full(n, "EPSG:4326"), B.VERSION: np.full(n, "v1"), B.FILE_TILES: np.ones(n, np.int64),
            tiles.VECTOR: v.astype(np.float32),
        }, v, centers


@pytest.mark.slow
def test_recall_at_a_million_rows_written_by_the_embedding_jobs_writer(tiny_model, tmp_path):
    """recall@10 >= 0.95 with the default search settings on a 1M-row table written and indexed as the
    embedding job does (its writer's merges, then its index step): the guard of issue 22."""
    from rsclip.ingest import writer
    from rsclip.ingest.config import EmbedConfig
    from rsclip.ingest.pipeline import build_index_after

    rng = np.random.default_rng(0)
    db = tmp_path / "db"
    table = tiles.create_table(db, model=str(tiny_model), dim=GUARD_DIM)
    tile_writer = writer.TileWriter(table, writer.open_errors_table(db, tiles.DEFAULT_TABLE), commit_rows=100_000)
    vectors = []
    for batch, v, centers in job_batches(GUARD_ROWS, 50_000, rng):
        tile_writer.write(batch)
        vectors.append(v)
    assert tile_writer.close().embedded == GUARD_ROWS
    build_index_after(EmbedConfig(db=str(db), archive=str(tmp_path), model=str(tiny_model)))
    vectors = np.concatenate(vectors)
    queries = centers[rng.integers(0, 1000, 100)] + rng.standard_normal((100, GUARD_DIM)).astype(np.float32) * (
        0.8 / np.sqrt(GUARD_DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    row_of = lambda uris: [int(u.rsplit("-", 1)[1][:-4]) for u in uris]
    table = tiles.open_table(db)
    for searcher in (searchers.LanceSearcher(table), searchers.searcher_for(table, resident=True)):
        hits = [len(set(row_of(searchers.search(searcher, q, 10)["uri"])) & set(np.argsort(-(vectors @ q))[:10]))
                for q in queries]
        assert np.mean(hits) / 10 >= 0.95, type(searcher).__name__
    state = rindex.index_state(table)
    assert state.indexed_rows == GUARD_ROWS and state.num_partitions == rindex.ivf_lists(GUARD_ROWS)
