"""Resident search in both tiers (rsclip.search.memory_table): the in-process index proposes, exact cosines rank;
filters never lose a row; the compact tier reads vectors and columns from the table and stays small."""

from __future__ import annotations

import numpy as np
import pytest

import rsclip
from rsclip.search import memory_table, searchers
from rsclip.search.filters import Filters
from rsclip.table import datasets, tiles
from rsclip.table import index as rindex
from tests.helpers.vectors import clustered, resident_in_tier, tile_rows, unit_centers

DIM = 32
ROWS = 6000


@pytest.fixture(scope="module")
def indexed_db(tiny_model, tmp_path_factory):
    rng = np.random.default_rng(3)
    centers = unit_centers(rng, 60, DIM)
    db = tmp_path_factory.mktemp("tiers") / "db"
    table = tiles.create_table(db, model=str(tiny_model), dim=DIM)
    for start in range(0, ROWS, 2000):  # three fragments, and rows deleted from the middle one
        tiles.add_tiles(table, tile_rows(start, clustered(rng, 2000, centers), rng))
    table.delete("uri LIKE '%scene-3%'")
    rindex.build_index(db, min_rows=1000)
    frame = tiles.open_table(db).to_pandas()
    return db, clustered(rng, 30, centers), frame


@pytest.fixture(params=[memory_table.MEMORY, memory_table.COMPACT])
def tier(request, indexed_db, monkeypatch, index_small_tables):
    """A fresh resident cache whose limit gives the table the tier asked for."""
    resident_in_tier(monkeypatch, indexed_db[0], request.param)
    return request.param


def exact(frame, q, k, mask=None):
    rows = frame if mask is None else frame[mask(frame)]
    scores = np.stack(rows["vector"].to_numpy()) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return rows.iloc[order]["id"].tolist(), scores[order]


def in_box(box):
    return lambda f: (f.lon_min <= box[2]) & (f.lon_max >= box[0]) & (f.lat_min <= box[3]) & (f.lat_max >= box[1])


def test_the_index_proposes_and_exact_cosines_rank(indexed_db, tier):
    db, queries, frame = indexed_db
    table = tiles.open_table(db)
    searcher = searchers.searcher_for(table, resident=True)
    assert searcher.path == f"resident ({tier})" and searcher.rows.indexed and len(searcher.rows) == len(frame)
    hits = []
    for q in queries:
        got = searchers.search(searcher, q, 10)
        assert got.attrs["search_path"] == searcher.path
        want, _ = exact(frame, q, 10)
        hits.append(len(set(got["id"]) & set(want)))
        vectors = np.stack(frame.set_index("id").loc[got["id"], "vector"].to_numpy())
        np.testing.assert_allclose(got["score"].to_numpy(), vectors @ q, atol=1e-5)
    assert np.mean(hits) / 10 >= 0.95
    # the answer's columns are the table's, whichever tier held them
    got = searchers.search(searcher, queries[0], 10)
    lance = frame.set_index("id").loc[got["id"]]
    for column in ("uri", "x", "width", "lon_min", "lat_max"):
        assert got[column].tolist() == lance[column].tolist()


@pytest.mark.parametrize("through_index", [False, True])
def test_filters_keep_every_row_they_match(indexed_db, tier, monkeypatch, through_index):
    """Boxes keeping ~0.1 % to ~2 % of the rows, and SQL: the answer is the exact top k of the rows kept,
    whether those rows are ranked directly or the index is asked among them (all lists probed)."""
    if through_index:
        monkeypatch.setattr(searchers, "RESIDENT_EXACT_ROWS", 0)
        monkeypatch.setattr(searchers, "COMPACT_EXACT_ROWS", 0)
    db, queries, frame = indexed_db
    searcher = searchers.searcher_for(tiles.open_table(db), resident=True)
    for i, box in enumerate([(-20.0, -10.0, 20.0, 10.0), (0.0, 0.0, 8.0, 8.0), (100.0, -60.0, 170.0, 0.0)]):
        q = queries[i]
        got = searchers.search(searcher, q, 10, Filters.of(bbox=box))
        assert got["id"].tolist() == exact(frame, q, 10, in_box(box))[0]
    where = "uri LIKE '%7.tif'"
    got = searchers.search(searcher, queries[5], 10, Filters.of(where=where, bbox=(-170.0, -80.0, 0.0, 80.0)))
    both = lambda f: in_box((-170.0, -80.0, 0.0, 80.0))(f) & f.uri.str.endswith("7.tif")
    assert got["id"].tolist() == exact(frame, queries[5], 10, both)[0]


def test_query_names_the_path_that_answered(indexed_db, tier):
    db, queries, _ = indexed_db
    assert rsclip.query(db, queries[0], k=3, resident=True).attrs["search_path"] == f"resident ({tier})"
    assert rsclip.query(db, queries[0], k=3).attrs["search_path"] == "lance"


def test_a_compact_copy_of_512_d_rows_holds_under_400_bytes_a_row(tiny_model, tmp_path, index_small_tables):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = tiles.create_table(tmp_path / "db", model=str(tiny_model), dim=512)
    tiles.add_tiles(table, tile_rows(0, vectors, rng))
    dataset = datasets.dataset_of(table)
    compact = memory_table.ResidentTable(dataset, searchers.fetch_columns(table), indexed=True,
                                         tier=memory_table.COMPACT)
    memory = memory_table.ResidentTable(dataset, searchers.fetch_columns(table), indexed=True)
    assert compact.indexed and compact.nbytes / 3000 <= 400 < memory.nbytes / 3000
    assert memory_table.estimated_bytes(dataset, memory_table.COMPACT) / 3000 <= 400
    q = vectors[17]
    for copy in (compact, memory):
        best, read = copy.top(copy.nearest(q, 10, searchers.DEFAULT_NPROBES), q, 1)
        assert (read is None) == (copy is memory)  # the compact tier read the vectors it scored: not again
        columns, found = copy.answer(best, read)
        assert columns.column("uri").to_pylist() == ["s3://archive/scene-17.tif"]
        assert np.array_equal(found, vectors[17:18].astype(np.float32))
        assert searchers.cosines(found, q)[0] == pytest.approx(1.0, abs=1e-5)


def test_the_servers_resident_limit_reaches_the_page_and_bad_limits_are_refused(capsys, tmp_path):
    from rsclip.app.cli import main
    from rsclip.app.server import WebConfig, validate_resident_gb
    from rsclip.app.web.page import parse_args
    from rsclip.errors import InvalidInput

    config = WebConfig("db", resident_max_gb=1.5)
    assert parse_args(config.arguments()) == config
    assert "--resident-max-gb" not in WebConfig("db").arguments()
    for bad in (0, -1, "x", 5000, float("nan")):
        with pytest.raises(InvalidInput, match="resident memory limit"):
            validate_resident_gb(bad)
    assert main(["serve", str(tmp_path / "db"), "--resident-max-gb", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resident memory limit" in err[0]


@pytest.fixture(scope="module")
def small_clusters_db(tiny_model, tmp_path_factory):
    """16,000 rows of 512-d in clusters of 10 (varied tiles: each list of an index mixes clusters), indexed."""
    rng = np.random.default_rng(5)
    db, centers = tmp_path_factory.mktemp("small-clusters") / "db", unit_centers(rng, 1600, 512)
    table = tiles.create_table(db, model=str(tiny_model), dim=512)
    tiles.add_tiles(table, tile_rows(0, clustered(rng, 16_000, centers, spread=0.8), rng))
    rindex.build_index(db, min_rows=1000)
    return db, centers, tiles.open_table(db).to_pandas()


def compact_searcher(db) -> searchers.ResidentSearcher:
    """A searcher of a compact copy of the table at ``db`` (its own index, vectors read from the table)."""
    table = tiles.open_table(db)
    rows = memory_table.ResidentTable(datasets.dataset_of(table), searchers.fetch_columns(table), indexed=True,
                                      tier=memory_table.COMPACT)
    return searchers.ResidentSearcher(table, rows)


def test_a_wide_box_over_small_clusters_keeps_every_row_through_a_compact_index(small_clusters_db, monkeypatch,
                                                                                 index_small_tables):
    """A box keeping ~5 % of the rows leaves a query's best kept rows in any list, as for a query near no
    cluster; an index of at most ivf_index.FAR_SCAN_ROWS rows is searched in every list for them."""
    monkeypatch.setattr(searchers, "COMPACT_EXACT_ROWS", 0)  # as for boxes keeping more rows than it of a larger table
    db, centers, frame = small_clusters_db
    searcher, rng = compact_searcher(db), np.random.default_rng(6)
    assert searcher.rows.indexed  # past EXACT_ROWS here: through the index
    missed = 0
    for i, q in enumerate(clustered(rng, 20, centers, spread=0.8)):
        box = (-170.0 + 13 * i, -20.0, -100.0 + 13 * i, 20.0)
        got = searchers.search(searcher, q, 10, Filters.of(bbox=box))["id"].tolist()
        missed += len(set(exact(frame, q, 10, in_box(box))[0]) - set(got))
    assert missed == 0


def test_far_queries_search_every_list_of_a_small_compact_index(small_clusters_db, index_small_tables):
    db, _, frame = small_clusters_db
    searcher, rng = compact_searcher(db), np.random.default_rng(7)
    far = rng.normal(size=(20, 512)).astype(np.float32)  # random directions: near no cluster, as a text
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    assert all(searcher.rows.index.covers_all(q) for q in far)
    missed = sum(len(set(exact(frame, q, 10)[0]) - set(searchers.search(searcher, q, 10)["id"])) for q in far)
    assert missed <= 10, missed  # 104 of 200 probing the lists of a near query
