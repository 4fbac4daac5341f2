"""Searches through Lance's vector index: an IVF_SQ index built for the dot product (the cosine of unit vectors,
with better lists for a query near no cluster), asked with the metric the index was built with (an older cosine
IVF_PQ index keeps being used until a build retrains it), and probing more lists for a query near no cluster
than for one near a cluster; far queries keep their top 10."""

from __future__ import annotations

import numpy as np
import pytest
from lancedb import index as lance_index

import rsclip
from rsclip.search import lance_probes, searchers
from rsclip.search.ivf_index import MAX_PROBED_SHARE, far_of, probe_count
from rsclip.table import index as rindex, tiles
from tests.helpers.vectors import clustered, tile_rows, unit_centers

DIM = 512


def write_table(db, model, rows: int, rng, clusters: int = 200):
    """A table of ``rows`` clustered unit vectors (``clusters`` scene types) and its centres."""
    centers = unit_centers(rng, clusters, DIM)
    table = tiles.create_table(db, model=str(model), dim=DIM)
    tiles.add_tiles(table, tile_rows(0, clustered(rng, rows, centers, spread=0.8), rng))
    return centers


def far_queries(rng, n: int) -> np.ndarray:
    """Random unit directions: near no cluster of the table, as a text across CLIP's modality gap."""
    far = rng.normal(size=(n, DIM)).astype(np.float32)
    return far / np.linalg.norm(far, axis=1, keepdims=True)


def test_a_far_query_probes_more_lists_than_a_near_one():
    rng = np.random.default_rng(0)
    centroids = unit_centers(rng, 400, DIM).astype(np.float32) * 0.7  # means of unit vectors: shorter
    near = centroids[3] / np.linalg.norm(centroids[3])
    assert probe_count(centroids, near, 10, 400_000) == 10
    far = far_queries(rng, 5)
    counts = [probe_count(centroids, q, 10, 400_000) for q in far]
    assert all(20 < c <= int(400 * MAX_PROBED_SHARE) for c in counts), counts
    assert probe_count(centroids, far[0], 10, 400 * 2000) == 100  # at most 200,000 rows: 100 lists of 2,000
    assert not far_of(centroids @ near) and all(far_of(centroids @ q) for q in far)
    few = centroids[:62]  # a quarter of 62 lists is fewer than the 20 Lance probes: far is told all the same
    assert all(far_of(few @ q) for q in far)


@pytest.mark.slow  # a 30,000-row table of 512-d vectors and its index (~30 s)
def test_far_queries_through_lance_keep_their_top_10(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    db = tmp_path / "db"
    write_table(db, tiny_model, 30_000, rng)
    state = rsclip.build_index(db, min_rows=1000)
    table = tiles.open_table(db)
    assert table.index_stats(rindex.VECTOR_INDEX).distance_type == rindex.INDEX_METRIC == "dot"
    assert "IVF_SQ" in state.action
    frame = table.to_pandas()
    vectors = np.stack(frame[tiles.VECTOR].to_numpy())
    recalls = []
    for q in far_queries(rng, 30):
        truth = set(frame[tiles.ID].iloc[np.argsort(-(vectors @ q))[:10]])
        found = searchers.search(searchers.LanceSearcher(table), q, 10)
        assert found.attrs.get("search_path", "lance") == "lance"
        recalls.append(len(truth & set(found[tiles.ID])) / 10)
    # a cosine IVF_PQ index probing 20 lists: 0.48 on this table; a dot product IVF_SQ one probing the lists the
    # probe rule allows (a quarter of them): 0.87-0.9 (k-means draws its own seeds); every list (a far query on a
    # table of at most ivf_index.FAR_SCAN_ROWS rows): 1.0
    assert np.mean(recalls) >= 0.97, recalls


def test_a_cosine_ivf_pq_index_is_used_until_a_build_retrains_it(tiny_model, tmp_path):
    rng = np.random.default_rng(1)
    db = tmp_path / "db"
    write_table(db, tiny_model, 3000, rng, clusters=20)
    table = tiles.open_table(db)
    table.create_index(tiles.VECTOR, config=lance_index.IvfPq(distance_type="cosine", num_partitions=8,
                                                              num_sub_vectors=16), name=rindex.VECTOR_INDEX)
    table = tiles.open_table(db)
    q = far_queries(rng, 1)[0]
    dataset = searchers.LanceSearcher(table).dataset
    probe = lance_probes.probing(dataset, q, 4, rindex.vector_index(dataset))
    assert probe.metric == "cosine" and 4 <= probe.nprobes <= 8  # the index's own metric: else a full scan
    nearest = searchers.nearest_args(q, 10, where=None, nprobes=probe.nprobes, metric=probe.metric)
    plan = searchers.LanceSearcher(table).dataset.scanner(columns=[tiles.ID], nearest=nearest).explain_plan()
    assert "ANN" in plan  # the index answered, not a scan of every row
    assert len(rsclip.query(db, q, 5)) == 5
    state = rsclip.build_index(db, min_rows=1000)
    assert "built IVF_SQ" in state.action
    table = tiles.open_table(db)
    assert table.index_stats(rindex.VECTOR_INDEX).distance_type == "dot"
    dataset = searchers.LanceSearcher(table).dataset
    assert lance_probes.probing(dataset, q, 4, rindex.vector_index(dataset)).metric == "dot"


def test_a_small_indexed_table_ranks_far_queries_exactly_on_every_path(tiny_model, tmp_path):
    rng = np.random.default_rng(2)
    db = tmp_path / "db"
    write_table(db, tiny_model, 6000, rng, clusters=60)
    rsclip.build_index(db, min_rows=1000)
    table = tiles.open_table(db)
    assert rindex.vector_index(searchers.LanceSearcher(table).dataset) is not None
    frame = table.to_pandas()
    vectors = np.stack(frame[tiles.VECTOR].to_numpy())
    for q in far_queries(rng, 20):
        truth = frame[tiles.ID].iloc[np.argsort(-(vectors @ q), kind="stable")[:10]].tolist()
        assert rsclip.query(db, q, k=10)[tiles.ID].tolist() == truth
        assert rsclip.query(db, q, k=10, resident=True)[tiles.ID].tolist() == truth


def small_clusters_table(db, model, rng):
    """16,000 rows in clusters of 10, indexed (62 lists: each mixes clusters, as in a table of 20k-500k varied
    tiles), its rows as a frame and their vectors."""
    write_table(db, model, 16_000, rng, clusters=1600)
    rsclip.build_index(db, min_rows=1000)
    table = tiles.open_table(db)
    frame = table.to_pandas()
    return table, frame, np.stack(frame[tiles.VECTOR].to_numpy())


def test_far_queries_rank_every_row_of_a_small_indexed_memory_copy(tiny_model, tmp_path, index_small_tables):
    rng = np.random.default_rng(3)
    table, frame, vectors = small_clusters_table(tmp_path / "db", tiny_model, rng)
    searcher = searchers.searcher_for(table, resident=True)
    assert searcher.path == "resident (memory)" and searcher.rows.indexed  # past EXACT_ROWS here: an index
    recalls = []
    for q in far_queries(rng, 20):
        truth = frame[tiles.ID].iloc[np.argsort(-(vectors @ q), kind="stable")[:10]].tolist()
        found = searchers.search(searcher, q, 10)[tiles.ID].tolist()
        if searcher.far_and_few(q):  # what the rule tells far (ivf_index.far_of): ranked over every row
            assert found == truth
        recalls.append(len(set(found) & set(truth)) / 10)
    assert np.mean(recalls) >= 0.9, recalls  # 0.5 through the index alone


def test_far_queries_probe_every_list_of_a_small_indexed_table(tiny_model, tmp_path, index_small_tables):
    rng = np.random.default_rng(4)
    table, frame, vectors = small_clusters_table(tmp_path / "db", tiny_model, rng)
    searcher = searchers.LanceSearcher(table)
    index = rindex.vector_index(searcher.dataset)
    lists = len(lance_probes.index_centroids(searcher.dataset, index))
    recalls, every_list = [], 0
    for q in far_queries(rng, 20):
        every_list += lance_probes.probing(searcher.dataset, q, searcher.nprobes, index).nprobes == lists
        truth = set(frame[tiles.ID].iloc[np.argsort(-(vectors @ q))[:10]])
        found = searchers.search(searcher, q, 10)
        assert found.attrs["search_path"] == "lance"
        recalls.append(len(truth & set(found[tiles.ID])) / 10)
    # random directions are told far (0 of 20 before: a quarter of these 62 lists is fewer than the least probed)
    assert every_list >= 18, every_list
    assert np.mean(recalls) >= 0.95, recalls  # 0.57 probing the least lists
