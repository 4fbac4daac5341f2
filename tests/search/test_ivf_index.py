"""The resident copies' IVF index: a query near one of the table's clusters probes the minimum of lists, a query
far from all of them (a text across CLIP's modality gap, anything unlike the archive) probes more, and so keeps
its exact top 10 among the candidates where the fixed minimum lost part of it."""

from __future__ import annotations

import numpy as np

from rsclip.search import ivf_index
from rsclip.search.ivf_index import IvfIndex
from tests.helpers.vectors import clustered, unit_centers

DIM, ROWS, LISTS, K, CANDIDATES = 64, 20_000, 140, 10, 100


def built(vectors: np.ndarray) -> IvfIndex:
    index = IvfIndex(DIM, LISTS)
    index.train(vectors[np.random.default_rng(1).choice(len(vectors), 9_000, replace=False)])
    index.add(vectors)
    return index


def recall(index: IvfIndex, vectors: np.ndarray, queries: np.ndarray, nprobe: int) -> float:
    found = []
    for q in queries:
        truth = set(np.argsort(-(vectors @ q))[:K])
        candidates = index.search(q, CANDIDATES, nprobe)
        best = candidates[np.argsort(-(vectors[candidates] @ q))[:K]]
        found.append(len(truth & set(best.tolist())) / K)
    return float(np.mean(found))


def test_far_queries_probe_more_lists_and_keep_their_top_10(monkeypatch):
    rng = np.random.default_rng(0)
    centers = unit_centers(rng, 200, DIM)
    vectors = clustered(rng, ROWS, centers, spread=0.8)
    index = built(vectors)
    near = clustered(rng, 30, centers, spread=0.8)
    far = unit_centers(rng, 30, DIM).astype(np.float32)
    least = max(5, int(np.ceil(LISTS * ivf_index.MIN_PROBED_SHARE)))
    near_probes = [index.probes(q, 5) for q in near]  # a cluster split over lists probes those lists
    assert np.median(near_probes) == least and max(near_probes) <= 3 * least
    assert min(index.probes(q, 5) for q in far) > 3 * least
    assert max(index.probes(q, 5) for q in far) <= np.ceil(LISTS * ivf_index.MAX_PROBED_SHARE)
    adaptive = recall(index, vectors, far, 5)
    monkeypatch.setattr(ivf_index, "PROBE_SPREAD", 0.0)  # the fixed minimum, as before
    fixed = recall(index, vectors, far, 5)
    assert adaptive >= 0.95 and adaptive > fixed, (adaptive, fixed)
    assert recall(index, vectors, near, 5) == 1.0


def test_a_far_query_gets_the_most_candidates_however_few_lists_its_cap_allows(monkeypatch):
    """At 10M rows the row cap gives a far query 2x the least lists; candidates in proportion to that (2x) found
    0.881 of its top 10 there: the codes rank its many about-as-close rows loosely, whatever lists are probed."""
    rng = np.random.default_rng(2)
    centers = unit_centers(rng, 200, DIM)
    vectors = clustered(rng, ROWS, centers, spread=0.8)
    index = built(vectors)
    least = ivf_index.least_probes(LISTS, 5)
    monkeypatch.setattr(ivf_index, "FAR_SCAN_ROWS", 0)  # this index as a large one: no every-list rule
    monkeypatch.setattr(ivf_index, "MAX_PROBED_ROWS", 2 * least * ROWS // LISTS)  # a far query: 2x the least
    near, far = clustered(rng, 1, centers, spread=0.8)[0], unit_centers(rng, 30, DIM).astype(np.float32)
    assert index.probes(near, 5) == least and len(index.search(near, CANDIDATES, 5)) == CANDIDATES
    assert max(index.probes(q, 5) for q in far) == 2 * least
    assert {len(index.search(q, CANDIDATES, 5)) for q in far} == {ivf_index.MAX_CANDIDATE_GROWTH * CANDIDATES}
    grown = recall(index, vectors, far, 5)
    monkeypatch.setattr(ivf_index, "MAX_CANDIDATE_GROWTH", 2)  # in proportion to the lists probed, as before
    assert grown > recall(index, vectors, far, 5), grown
