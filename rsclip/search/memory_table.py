"""In-memory tables: one version of a tile table held in memory (resident), for long-lived searchers (the web app).

A search through Lance alone pays, per query, for reading the full vectors of the ``refine_factor * k``
candidates it re-ranks and for fetching the answer's columns from the data files: at 1M rows that is most
of its latency (BENCHMARKS.md, Query). A :class:`ResidentTable` keeps the result columns (~130 MB per
million rows) and the float32 vectors (2 KB per 512-d row) in memory, addressed by Lance row id, so the
index is asked for candidate row ids only and re-ranking and the answer's columns come from memory. Scores
are the exact cosines of the candidates, as an exact scan computes them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from rsclip.table import datasets, tiles
from rsclip.search.filters import bbox_mask

ROW_ID = "_rowid"
SCAN_ROWS = 65_536
# Resident copies kept per process, the one being loaded included: each is a full copy of its table, so at
# most two exist at once (the version serving searches and the next one loading).
KEEP = 2
# The largest resident copy (bytes) by default; larger tables are searched through Lance (`cache.max_bytes`,
# `rsclip serve --resident-max-gb`).
MAX_BYTES = 8 * 1024**3
ROW_OVERHEAD_BYTES = 160
# Seconds a search waits for another thread's first load of a table before searching without it.
LOAD_WAIT_S = 300.0


class ResidentTable:
    """``columns`` and the vectors of one Lance dataset version, in memory, addressed by row id."""

    def __init__(self, dataset, columns: tuple[str, ...], *, indexed: bool):
        n = dataset.count_rows()
        self.dataset = dataset  # the version it holds, for the index searches that go with it
        self.indexed = indexed  # whether the version has an ANN index on its vectors
        self.column_names = tuple(columns)
        row_ids = np.empty(n, dtype=np.uint64)
        vectors: np.ndarray | None = None
        parts, filled = [], 0
        for batch in dataset.to_batches(columns=[*columns, tiles.VECTOR], with_row_id=True,
                                        batch_size=SCAN_ROWS):
            m = batch.num_rows
            flat = batch.column(tiles.VECTOR).flatten().to_numpy(zero_copy_only=False)
            if vectors is None:
                vectors = np.empty((n, flat.size // max(m, 1)), dtype=np.float32)
            vectors[filled : filled + m] = flat.reshape(m, -1)  # (m, D)
            row_ids[filled : filled + m] = batch.column(ROW_ID).to_numpy()
            parts.append(batch.select(list(columns)))
            filled += m
        if filled != n:
            raise RuntimeError(f"table changed while being loaded: {filled} rows read, {n} counted")
        self.vectors = vectors if vectors is not None else np.zeros((0, 0), dtype=np.float32)
        self._norms = np.maximum(np.linalg.norm(self.vectors, axis=1), 1e-12) if n else np.zeros(0, np.float32)
        # one chunk per column: Arrow's take on a many-chunk column concatenates it first (~20 ms at 1M rows)
        self.columns = pa.Table.from_batches(parts).combine_chunks() if parts else pa.table(
            {c: pa.array([], dataset.schema.field(c).type) for c in columns})
        # bounds as float arrays, null -> NaN (never inside a box, as SQL's NULL)
        self._bounds = {c: self.columns.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                        for c in tiles.BOUNDS_COLUMNS if c in self.column_names}
        self._order = np.argsort(row_ids, kind="stable")
        self._sorted_ids = row_ids[self._order]

    def __len__(self) -> int:
        return len(self._sorted_ids)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self._norms.nbytes + self.columns.nbytes + self._order.nbytes
                   + self._sorted_ids.nbytes + sum(v.nbytes for v in self._bounds.values()))

    def positions(self, row_ids) -> np.ndarray:
        """Row positions (into :attr:`vectors` and :attr:`columns`) of Lance row ids of this version."""
        ids = np.asarray(row_ids, dtype=np.uint64)
        at = np.searchsorted(self._sorted_ids, ids)
        if len(ids) and (at.max(initial=0) >= len(self._sorted_ids) or (self._sorted_ids[at] != ids).any()):
            raise KeyError("row ids not in this version of the table")
        return self._order[at]

    def intersecting(self, bbox) -> np.ndarray:
        """Boolean mask of the rows whose bounds intersect ``(lon_min, lat_min, lon_max, lat_max)`` (touching
        counts; rows without bounds never match), as :func:`rsclip.search.filters.bbox_sql` in SQL."""
        return bbox_mask(self._bounds, bbox)

    def scores(self, positions: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Cosine similarity of ``vector`` with the rows at ``positions`` (float64)."""
        q = np.asarray(vector, dtype=np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        if len(positions) > len(self) // 4:  # streaming every row beats gathering a large share of them
            dots = np.empty(len(self), dtype=np.float32)
            for start in range(0, len(self), SCAN_ROWS):
                dots[start : start + SCAN_ROWS] = self.vectors[start : start + SCAN_ROWS] @ q
            dots = dots[positions]
        else:
            dots = np.empty(len(positions), dtype=np.float32)
            for start in range(0, len(positions), SCAN_ROWS):  # bounded working set: gathered rows are copies
                dots[start : start + SCAN_ROWS] = self.vectors[positions[start : start + SCAN_ROWS]] @ q
        return dots.astype(np.float64) / self._norms[positions]

    def top(self, positions: np.ndarray, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, scores)`` of the ``k`` rows among ``positions`` most similar to ``vector``, best first."""
        scores = self.scores(positions, vector)
        if len(scores) > k:
            keep = np.argpartition(-scores, k - 1)[:k]
            positions, scores = positions[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        return positions[order], scores[order]

    def rows(self, positions: np.ndarray) -> pa.Table:
        """The resident columns of the rows at ``positions``, in that order."""
        return self.columns.take(pa.array(positions, type=pa.int64()))


def estimated_bytes(dataset) -> int:
    """Memory a resident copy of ``dataset`` would take: its vectors plus ~160 bytes of columns per row."""
    dim = dataset.schema.field(tiles.VECTOR).type.list_size
    return int(dataset.count_rows() * (dim * 4 + ROW_OVERHEAD_BYTES))


class ResidentCache:
    """Resident copies of table versions, at most ``keep`` in memory (the one being loaded included) and
    never more than ``max_bytes`` each.

    A version is loaded outside the cache's lock, once, by the first thread that asks for it; while it loads,
    other threads asking for it get the newest version of that table already in memory (their searches run
    on that snapshot) or, when none is, wait for the load. A table too large for ``max_bytes`` is not loaded:
    :meth:`get` returns None and searches go through Lance.
    """

    def __init__(self, keep: int = KEEP, max_bytes: int = MAX_BYTES, loader=None):
        self.keep, self.max_bytes = max(1, keep), max_bytes
        self._loader = loader or ResidentTable  # (dataset, columns, indexed=) -> ResidentTable
        self._loaded: "OrderedDict[tuple, ResidentTable]" = OrderedDict()
        self._loading: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Copies in memory, the ones being loaded included."""
        with self._lock:
            return len(self._loaded) + len(self._loading)

    def versions(self) -> tuple[list[int], list[int]]:
        """``(loaded, loading)`` table versions, oldest first."""
        with self._lock:
            return [k[1] for k in self._loaded], [k[1] for k in self._loading]

    def _newest_of(self, uri: str, columns: tuple) -> ResidentTable | None:
        versions = [(k[1], v) for k, v in self._loaded.items() if k[0] == uri and k[2] == columns]
        return max(versions, key=lambda kv: kv[0])[1] if versions else None

    def _make_room(self, uri: str, columns: tuple) -> None:
        """Evict so that the loaded copies plus the loads under way stay within ``keep`` after one more load,
        the newest copy of ``uri`` staying as long as possible (it serves searches meanwhile)."""
        keeper = self._newest_of(uri, columns)
        while self._loaded and len(self._loaded) + len(self._loading) >= self.keep:
            victim = next((k for k, v in self._loaded.items() if v is not keeper), None)
            if victim is None:
                victim = next(iter(self._loaded))
            del self._loaded[victim]

    def get(self, table, columns: tuple[str, ...]) -> ResidentTable | None:
        """The resident copy of ``table``'s current version, or of its newest version in memory while the
        current one loads; None when the table is too large to keep (search through Lance instead)."""
        dataset = datasets.dataset_of(table)
        key, columns = (dataset.uri, dataset.version, tuple(columns)), tuple(columns)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            loading = self._loading.get(key)
            older = self._newest_of(dataset.uri, columns)
            if loading is not None and older is not None:
                return older
            if loading is None:
                if estimated_bytes(dataset) > self.max_bytes:
                    return None
                self._make_room(dataset.uri, columns)
                loading = self._loading[key] = threading.Event()
                owner = True
            else:
                owner = False
        if not owner:
            loading.wait(LOAD_WAIT_S)
            with self._lock:
                return self._loaded.get(key) or self._newest_of(dataset.uri, columns)
        return self._load(key, dataset, table, columns, loading)

    def _load(self, key, dataset, table, columns, done: threading.Event) -> ResidentTable:
        try:
            loaded = self._loader(dataset, columns, indexed=tiles.has_vector_index(table))
            with self._lock:
                self._loaded[key] = loaded
            return loaded
        finally:
            with self._lock:
                self._loading.pop(key, None)
            done.set()


cache = ResidentCache()


def resident_table(table, columns: tuple[str, ...]) -> ResidentTable | None:
    """The process's resident copy of ``table`` (:meth:`ResidentCache.get` of :data:`cache`)."""
    return cache.get(table, columns)
