"""How a search through Lance uses the table's vector index: the metric it was built with (a search asking
another scans every row) and how many IVF lists to probe: at least the searcher's ``nprobes``, more for a query
near no cluster of the table (a text across CLIP's modality gap, anything unlike the archive), by the rule a
resident copy's own index follows (:func:`rsclip.search.ivf_index.probe_count`) applied to the centroids of the
Lance index (BENCHMARKS.md "Far queries through Lance"), read once per index and process. Such a query
(:func:`rsclip.search.ivf_index.far_of`) on a table of at most :data:`~rsclip.search.ivf_index.FAR_SCAN_ROWS` rows
probes every list: there each list mixes clusters, and the rule's caps left 0.63-0.94 of its top 10 found at
20k-500k rows; every list finds all of it (30k / 150k / 500k rows: 22 / 70 / 190 ms; an exact scan through
Lance costs ~2.4 ms per 1,000 rows)."""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from rsclip.model.vectors import unit
from rsclip.search.ivf_index import covers_all, probes_of
from rsclip.table import index as table_index, tiles

KEPT = 8  # indexes a process remembers (a long-lived service sees a new one per index rebuild)
_lock = threading.Lock()
_centroids: dict[tuple[str, ...], np.ndarray | None] = {}  # an index's segments' uuids -> its lists' centroids


class Probing(NamedTuple):
    """What a search through the index asks: its ``metric`` and the ``nprobes`` lists to probe."""

    metric: str
    nprobes: int


def probing(dataset, vector: np.ndarray, nprobes: int, index: table_index.VectorIndex | None) -> Probing:
    """How a search of ``dataset`` (a Lance dataset at one version) for ``vector`` uses its vector ``index``
    (``table.index.vector_index`` of the dataset; None: ``tiles.METRIC`` and ``nprobes``, unused by an exact
    scan)."""
    if index is None:
        return Probing(tiles.METRIC, nprobes)
    centroids = index_centroids(dataset, index)
    if centroids is None:
        return Probing(index.metric, nprobes)
    rows, sims = dataset.count_rows(), centroids @ unit(vector)
    if covers_all(sims, rows):
        return Probing(index.metric, len(centroids))  # near no cluster, on a small table: every list (module doc)
    return Probing(index.metric, probes_of(sims, nprobes, rows))


def index_centroids(dataset, index: table_index.VectorIndex) -> np.ndarray | None:
    """The centroids of the lists of ``index`` (of ``dataset``), read once per index and process."""
    with _lock:
        if index.segments in _centroids:
            return _centroids[index.segments]
    centroids = table_index.vector_centroids(dataset, index.name)
    with _lock:
        while len(_centroids) >= KEPT:
            _centroids.pop(next(iter(_centroids)))
        _centroids[index.segments] = centroids
    return centroids
