"""Two shards of one archive, searched apart and merged, answer what the one table answers."""

from __future__ import annotations

import numpy as np
import pytest

from rsclip.errors import InvalidInput
from rsclip.search import searchers
from rsclip.search.filters import Filters
from rsclip.search.shards import search_shards
from rsclip.table import index as rindex
from rsclip.table import tiles
from tests.helpers.vectors import clustered, tile_rows, unit_centers

ROWS = 4000
DIM = 32


@pytest.fixture(scope="module")
def whole_and_shards(tiny_model, tmp_path_factory):
    rng = np.random.default_rng(5)
    centers = unit_centers(rng, 30, DIM)
    rows = tile_rows(0, clustered(rng, ROWS, centers), rng)
    root = tmp_path_factory.mktemp("shards")
    whole = tiles.create_table(root / "whole", model=str(tiny_model), dim=DIM)
    tiles.add_tiles(whole, rows)
    parts = []
    for i, half in enumerate((slice(0, ROWS // 2), slice(ROWS // 2, ROWS))):
        shard = tiles.create_table(root / f"shard{i}", model=str(tiny_model), dim=DIM)
        tiles.add_tiles(shard, {c: v[half] for c, v in rows.items()})
        rindex.build_index(root / f"shard{i}", min_rows=1000)
        parts.append(tiles.open_table(root / f"shard{i}"))
    return whole, parts, clustered(rng, 20, centers)


@pytest.mark.parametrize("filters", [Filters(), Filters.of(bbox=(-60.0, -30.0, 60.0, 30.0)),
                                     Filters.of(where="uri LIKE '%3.tif'")])
def test_exact_searches_of_two_shards_merge_into_the_one_tables_answer(whole_and_shards, filters):
    whole, parts, queries = whole_and_shards
    shard_searchers = [searchers.LanceSearcher(p) for p in parts]
    for q in queries[:8]:
        want = searchers.search(searchers.LanceSearcher(whole), q, 10, filters, exact=True)
        got = search_shards(shard_searchers, q, 10, filters, exact=True)
        assert got["id"].tolist() == want["id"].tolist()
        np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6)
        assert set(got["shard"]) <= {0, 1}


def test_resident_shards_through_their_indexes_find_the_exact_top_10(whole_and_shards, index_small_tables):
    whole, parts, queries = whole_and_shards
    shard_searchers = [searchers.searcher_for(p, resident=True) for p in parts]
    assert all(s.rows.indexed for s in shard_searchers)
    hits = []
    for q in queries:
        want = searchers.search(searchers.LanceSearcher(whole), q, 10, exact=True)
        got = search_shards(shard_searchers, q, 10)
        hits.append(len(set(got["id"]) & set(want["id"])))
        assert got.attrs["search_path"] == "shards: resident (memory)"
    assert np.mean(hits) / 10 >= 0.95


def test_bad_shard_requests_are_refused(whole_and_shards):
    whole, parts, queries = whole_and_shards
    with pytest.raises(InvalidInput, match="searchers"):
        search_shards([], queries[0], 10)
    with pytest.raises(InvalidInput, match="k must be"):
        search_shards([searchers.LanceSearcher(parts[0])], queries[0], 0)
