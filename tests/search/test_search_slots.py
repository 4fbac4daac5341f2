"""Searches at once in one process (rsclip.search.slots): at most ``search_slots()`` requests search
together whichever way they come (rsclip.query, find, the API's search), a request's nested calls keep the slot
they hold, and a failed search gives its slot back."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rsclip
from rsclip.app.api import calls
from rsclip.errors import InvalidInput
from rsclip.search import searchers, slots as search_slots
from rsclip.table import tiles
from tests.helpers.vectors import clustered, tile_rows, unit_centers

DIM = 16
CALLERS = 8


@pytest.fixture(scope="module")
def vector_db(tiny_model, tmp_path_factory):
    rng = np.random.default_rng(11)
    centers = unit_centers(rng, 8, DIM)
    db = tmp_path_factory.mktemp("slots") / "db"
    table = tiles.create_table(db, model=str(tiny_model), dim=DIM)
    tiles.add_tiles(table, tile_rows(0, clustered(rng, 400, centers), rng))
    return db, clustered(rng, CALLERS * 3, centers)


class Overlap:
    """Wraps ``searchers._find`` (the work inside a slot): counts the searches running at once, and keeps each one
    long enough (``hold`` seconds) for the callers to pile up."""

    def __init__(self, find, hold: float = 0.05):
        self.find, self.hold = find, hold
        self.lock, self.running, self.most, self.calls = threading.Lock(), 0, 0, 0

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.hold)  # not a wait for a state: room for the other callers to come in
            return self.find(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def slots(monkeypatch):
    """Two slots whatever the machine's CPUs, and the searches inside them counted."""
    monkeypatch.setattr(search_slots.searching, "_slots", threading.BoundedSemaphore(2))
    overlap = Overlap(searchers._find)
    monkeypatch.setattr(searchers, "_find", overlap)
    return overlap


def run_all(fn, items) -> list:
    with ThreadPoolExecutor(CALLERS) as pool:
        return list(pool.map(fn, items, timeout=300))


def test_slots_are_the_cpus_this_process_may_use_unless_a_service_sets_them(monkeypatch):
    assert search_slots.search_slots() == len(os.sched_getaffinity(0))
    gate = search_slots.searching
    monkeypatch.setattr(gate, "_slots", gate._slots)  # restored after
    with gate():  # a search running while the service sets its number (as serve_searches does: --workers)
        gate.allow(3)
    taken = [gate._slots.acquire(timeout=10) for _ in range(3)]  # the slot held before went back where it came from
    assert all(taken) and not gate._slots.acquire(timeout=0.2)
    for _ in taken:
        gate._slots.release()


@pytest.mark.parametrize("resident", [False, True], ids=["lance", "resident"])
def test_at_most_the_slots_search_at_once_through_rsclip_query(vector_db, slots, resident):
    db, queries = vector_db
    alone = [rsclip.query(db, q, k=5, resident=resident)["id"].tolist() for q in queries[:3]]
    slots.calls = slots.most = 0
    got = run_all(lambda q: rsclip.query(db, q, k=5, resident=resident)["id"].tolist(), list(queries))
    assert slots.calls == len(queries) and slots.most == 2  # they did overlap, two at a time
    assert got[:3] == alone  # the same answers as one caller gets


def test_find_and_the_api_search_hold_a_slot_too(vector_db, slots):
    db, queries = vector_db
    searcher = searchers.searcher_for(tiles.open_table(db))
    run_all(lambda q: searchers.find(searcher, q, 5), list(queries))
    assert slots.most == 2
    slots.most = 0
    bodies = [{"vector": q.tolist(), "k": 5} for q in queries]
    found = run_all(lambda body: calls.search(str(db), tiles.DEFAULT_TABLE, body, resident=False), bodies)
    assert slots.most == 2 and all(f.rows.num_rows == 5 for f in found)


def test_a_request_keeps_its_slot_inside_and_a_failed_one_gives_it_back(vector_db, monkeypatch):
    db, queries = vector_db
    monkeypatch.setattr(search_slots.searching, "_slots", threading.BoundedSemaphore(1))
    done = []
    # rsclip.query holds the one slot and its find enters again: no deadlock (bounded by the join below)
    worker = threading.Thread(target=lambda: done.append(rsclip.query(db, queries[0], k=3)), daemon=True)
    worker.start()
    worker.join(120)
    assert len(done) == 1 and len(done[0]) == 3
    with pytest.raises(InvalidInput):
        rsclip.query(db, queries[0], k=3, where="no_such_column > 1")
    assert search_slots.searching._slots.acquire(timeout=10)  # the failed search gave the slot back
    search_slots.searching._slots.release()
