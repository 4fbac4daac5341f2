"""The resident cache (rsclip.search.memory_table): loads outside its lock, serves the previous version while the
next loads, at most two copies, a memory cap beyond which searches go through Lance and say so."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from rsclip.table import datasets, tiles
from rsclip.search import memory_table, searchers
from rsclip.search.searchers import FETCH_COLUMNS

DIM = 16


def add_rows(table, start: int, n: int, seed: int) -> None:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tiles.add_tiles(table, dict(uri=[f"scene-{i}.tif" for i in range(start, start + n)], x=[0] * n, y=[0] * n,
                                width=[8] * n, height=[8] * n, vector=vectors))


@pytest.fixture
def table(tmp_path):
    tbl = tiles.create_table(tmp_path / "db", model="m", dim=DIM)
    add_rows(tbl, 0, 100, seed=0)
    return tbl


class GatedLoader:
    """Real ResidentTable loads that wait for the test's go-ahead before finishing (timing, not behaviour)."""

    def __init__(self):
        self.started, self.go = threading.Event(), threading.Event()

    def __call__(self, dataset, columns, **kwargs):
        self.started.set()
        assert self.go.wait(60)
        return memory_table.ResidentTable(dataset, columns, **kwargs)


def test_next_version_loads_while_the_previous_one_serves(table):
    loader = GatedLoader()
    cache = memory_table.ResidentCache(keep=2, loader=loader)
    loader.go.set()
    first = cache.get(table, FETCH_COLUMNS)
    assert len(first) == 100
    add_rows(table, 100, 20, seed=1)  # a new version, as an embedding job's commit makes one
    loader.started.clear()
    loader.go.clear()
    results = {}
    loading = threading.Thread(target=lambda: results.update(new=cache.get(table, FETCH_COLUMNS)))
    loading.start()
    assert loader.started.wait(60)
    # while the new version loads, another search gets the previous version at once
    during = cache.get(table, FETCH_COLUMNS)
    assert during is first and cache.versions() == ([first.dataset.version], [table.version])
    assert len(cache) == 2
    note = searchers.ResidentSearcher(table, during).note
    assert f"version {first.dataset.version}" in note and f"version {table.version}" in note
    loader.go.set()
    loading.join(60)
    assert len(results["new"]) == 120 and cache.get(table, FETCH_COLUMNS) is results["new"]


def test_never_more_than_two_copies(table):
    loader = GatedLoader()
    loader.go.set()
    cache = memory_table.ResidentCache(keep=2, loader=loader)
    for i in range(4):
        copy = cache.get(table, FETCH_COLUMNS)
        assert len(copy) == 100 + 10 * i and len(cache) <= 2
        add_rows(table, 100 + 10 * i, 10, seed=10 + i)
    # a load under way counts: with one copy serving and one loading, a third version evicts first
    loaded, loading = cache.versions()
    assert len(loaded) + len(loading) <= 2


def test_a_table_over_the_memory_cap_is_searched_through_lance_and_says_so(table, monkeypatch):
    compact = memory_table.estimated_bytes(datasets.dataset_of(table), memory_table.COMPACT)
    small = memory_table.ResidentCache(max_bytes=compact - 1)
    assert small.get(table, FETCH_COLUMNS) is None and len(small) == 0
    monkeypatch.setattr(memory_table, "cache", small)
    monkeypatch.setattr(searchers, "resident_table", small.get)
    searcher = searchers.searcher_for(table, resident=True)
    assert isinstance(searcher, searchers.LanceSearcher) and "in-memory limit" in searcher.note
    query = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    got = searchers.search(searcher, query, 5)
    want = searchers.search(searchers.LanceSearcher(table), query, 5)
    assert got["id"].tolist() == want["id"].tolist()


def test_the_tier_is_the_largest_that_fits(table):
    dataset = datasets.dataset_of(table)
    memory = memory_table.estimated_bytes(dataset)
    compact = memory_table.estimated_bytes(dataset, memory_table.COMPACT)
    assert compact < memory
    assert memory_table.choose_tier(dataset, memory) == memory_table.MEMORY
    assert memory_table.choose_tier(dataset, memory - 1) == memory_table.COMPACT
    assert memory_table.choose_tier(dataset, compact - 1) is None
    assert memory_table.ResidentCache().max_bytes <= min(memory_table.MAX_BYTES, memory_table.memory_limit())


def test_a_servers_cache_loads_in_the_background_and_lance_answers_meanwhile(table, monkeypatch):
    loader = GatedLoader()
    cache = memory_table.ResidentCache(loader=loader, wait=False)
    monkeypatch.setattr(memory_table, "cache", cache)
    monkeypatch.setattr(searchers, "resident_table", cache.get)
    searcher = searchers.searcher_for(table, resident=True)  # returns at once: nobody waits for the load
    assert isinstance(searcher, searchers.LanceSearcher) and "loading into memory" in searcher.note
    assert loader.started.wait(60) and cache.loading(datasets.dataset_of(table).uri)
    query = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    assert searchers.search(searcher, query, 5).attrs["search_path"] == "lance"
    loader.go.set()
    for thread in [t for t in threading.enumerate() if t.name.startswith("resident-load-")]:
        thread.join(60)
    resident = searchers.searcher_for(table, resident=True)
    assert resident.path == "resident (memory)" and len(resident.rows) == 100
    assert searchers.search(resident, query, 5)["id"].tolist() == searchers.search(searcher, query, 5)["id"].tolist()


def test_a_serving_process_loads_in_the_background_and_runs_blas_on_one_thread():
    code = """
import json, threadpoolctl
import faiss, numpy
from rsclip.search import memory_table
from rsclip.search.searchers import serve_searches
serve_searches(1.5)
serve_searches()
blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([memory_table.cache.wait, memory_table.cache.max_bytes, blas]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wait, max_bytes, blas = json.loads(res.stdout.strip().splitlines()[-1])
    assert wait is False and max_bytes == int(1.5 * 1024**3) and blas and set(blas) == {1}
