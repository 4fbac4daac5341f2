"""An in-process IVF index of one table version's vectors (FAISS), for resident searchers.

Lance's vector index is searched through Lance's scanner, which costs more than the probing itself (its
earlier 64-byte PQ codes also ranked candidates so loosely that 400 of them had to be re-scored exactly for
recall@10 0.99; BENCHMARKS.md, Query). A resident copy therefore builds its own index from the vectors it
streams in: an inverted file of ``lists`` lists whose rows are RaBitQ codes of their residuals (FAISS's
``IndexIVFRaBitQ``, :data:`CODE_BITS` bits a dimension plus correction factors: 148 bytes at 512-d). The
lists' centroids are searched exhaustively (one matrix product: ~0.05 ms a query at 1,000 lists, and a load
assigns its rows with BLAS); an HNSW graph over them cost more at every size rsclip holds in one process
(~0.2 ms a query, and a 1M-row copy loaded in 90 s instead of 24 s, one search a row; BENCHMARKS.md, Query).
Those codes rank well enough that the best 200 candidates of 10 lists hold the exact top 10 (recall@10 0.999
at 1M clustered rows, 1.0 from 4-bit scalar codes at 1.7x the bytes and 2.2x the time, 0.96 for 400 PQ-64
candidates; BENCHMARKS.md, Query): few full vectors are read to re-score them.
Ids are the rows' positions in the version's scan order; the index proposes, exact cosines decide.

Memory: the code and an 8-byte id per row (:func:`row_bytes`), plus the centroids (``lists`` x D floats, twice).
"""

from __future__ import annotations

import math

import numpy as np

# Training rows per list (FAISS asks for at least 39) and the k-means iterations: training cost grows with
# both, and the candidates are re-ranked exactly, so a coarse clustering loses little.
TRAIN_PER_LIST = 64
TRAIN_ITERATIONS = 10
# The least share of the lists a search probes: lists grow as sqrt(rows), and a neighbourhood spans more of
# them in a larger table (10 of 1,000 lists at 1M rows, 32 of 3,162 at 10M).
MIN_PROBED_SHARE = 0.01
# Lists whose centroid is about as close to the query as the nearest one (within PROBE_SPREAD standard
# deviations of the query's similarities to all centroids: a measure that holds at any dimension and scale) are
# probed too, up to MAX_PROBED_SHARE of the lists and MAX_PROBED_ROWS rows (a scan of ~25 ms here). A query near
# one cluster of the table (an image like the archive's) stands out from the rest and probes the minimum; a
# query far from every cluster (a text across CLIP's modality gap, anything unlike the archive) sees many lists
# about equally close, and its best rows may lie in any of them: with 10 fixed lists such queries lost part of
# their true top 10 (BENCHMARKS.md, Query: ood_recall10).
PROBE_SPREAD = 2.5
# A query with more lists than this about as close as its nearest is near no cluster (far), whatever share of the
# lists the least probe count is. bench/query.py's tables of 30k / 60k / 150k rows (117 / 234 / 387 Lance lists):
# queries drawn from the clusters have 1 such list (45 of 50), up to 8, a few split clusters 22-29; random
# directions 5-80 / 22-158 / 31-230; 8 or more at 62 lists. Telling far by more than the least probed (20 through
# Lance) missed those with 8-20 (recall 0.3-0.8). A near query taken for far costs time, never recall.
FAR_CLOSE_LISTS = 4
MAX_PROBED_SHARE = 0.25
MAX_PROBED_ROWS = 200_000
# Below ~1M rows each list mixes several of a table's clusters, and a far query's best rows (far_of), or a
# filtered query's best kept rows, may lie in any list: on a table of at most this many rows such a search
# covers every row. A memory copy ranks them all for a far query (rsclip.search.searchers), Lance probes every
# list of its index (rsclip.search.lance_probes), and a filtered search of this index probes every list with a
# far query's candidates (search). The capped probes found of a far query's top 10, resident / Lance: 0.65-0.89
# / 0.63-0.88 at 30k-150k rows, 0.924 / 0.94 at 300k, 0.962 / 0.928 at 500k, 0.981 / 0.985 at 1M; every row /
# every list 1.0 in 27 / 120 ms at 300k and 46 / 190 ms at 500k (BENCHMARKS.md, Query).
FAR_SCAN_ROWS = 500_000
# The codes: bits per dimension of a row's residual (2: 148 bytes a 512-d row), and of the query they are compared
# with. Measured at 1M rows (BENCHMARKS.md, Query): 1 bit ranks too loosely (recall 0.96 from 200 candidates,
# 0.36-0.62 for far queries), 4 bits cost as much as 4-bit scalar codes; 8 query bits gain nothing over 4.
CODE_BITS = 2
QUERY_BITS = 4
# A query near no cluster (far_of) has many rows about as close as its best ones, which the codes rank loosely:
# it gets this many times the candidates, whatever share of the lists it probes. Far queries' recall@10 through
# the compact copy by growth (BENCHMARKS.md, Query): 0.972 / 0.981 at 4 / 8 at 1M rows; 0.950 / 0.965 / 0.970 /
# 0.976 at 4 / 6 / 8 / 16 at 10M rows, where the row cap gives them 64 lists, 2x the least, and growth in
# proportion to that (the rule before) gave 0.881.
MAX_CANDIDATE_GROWTH = 8


def _faiss():
    import faiss

    return faiss


class IvfIndex:
    """An IVF index of RaBitQ-coded residuals (inner product on unit vectors) over row positions."""

    def __init__(self, dim: int, lists: int):
        faiss = _faiss()
        self.dim, self.lists = dim, lists
        self._quantizer = faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIVFRaBitQ(self._quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT, True, CODE_BITS)
        self._index.cp.niter = TRAIN_ITERATIONS
        self._index.cp.max_points_per_centroid = TRAIN_PER_LIST
        self._index.cp.min_points_per_centroid = 1  # a small table trains on what it has, quietly

    @staticmethod
    def training_rows(lists: int, rows: int) -> int:
        """How many rows to train on for ``lists`` lists (all of them in a small table)."""
        return min(rows, max(TRAIN_PER_LIST * lists, 10_000))

    def train(self, sample: np.ndarray) -> None:
        """Fit the list centroids (and what the codes need) on ``sample`` (rows x D)."""
        self._index.train(_unit(sample))
        self._centroids = self._quantizer.reconstruct_n(0, self.lists)

    def probes(self, query: np.ndarray, nprobe: int) -> int:
        """How many lists a search for ``query`` (a unit row) probes: at least ``nprobe`` (and
        :data:`MIN_PROBED_SHARE` of the lists), more when many centroids are about as close as the nearest
        (:data:`PROBE_SPREAD`), for that reason at most :data:`MAX_PROBED_SHARE` of them and
        :data:`MAX_PROBED_ROWS` rows."""
        return probe_count(self._centroids, query, nprobe, len(self))

    def covers_all(self, vector: np.ndarray) -> bool:
        """:func:`covers_all` for ``vector`` and this index's rows (a larger index answers before comparing the
        query with its centroids: ~20 us of a 1.6 ms search at 1M rows)."""
        if not small_table(len(self)):
            return False
        return covers_all(self._centroids @ _unit(np.asarray(vector, dtype=np.float32)[None, :])[0], len(self))

    def add(self, vectors: np.ndarray) -> None:
        """Append rows (their ids follow the rows already added)."""
        self._index.add(_unit(vectors))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def nbytes(self) -> int:
        """Codes and ids of the rows and the centroids (in the quantizer and a copy)."""
        return int(len(self) * (self._index.code_size + 8) + self.lists * self.dim * 4 * 2)

    def search(self, vector: np.ndarray, n: int, nprobe: int, among: np.ndarray | None = None) -> np.ndarray:
        """Positions of up to ``n`` candidates for ``vector`` from ``nprobe`` lists or more (:meth:`probes`),
        best first by their codes; :data:`MAX_CANDIDATE_GROWTH` times ``n`` for a query near no cluster
        (:func:`far_of`). A far query of an index of at most :data:`FAR_SCAN_ROWS` rows probes every list (a
        compact copy's far queries: a memory copy ranks every row for them).

        ``among`` (positions) restricts the candidates to those rows; the lists probed then grow in proportion
        (all of them once the rows kept are under 1/``nprobe`` of the table, or the index holds at most
        :data:`FAR_SCAN_ROWS` rows), so a filter keeping few rows never loses one because its list was not
        probed. In a small index a cluster holds few rows: the few a filter keeps there leave the query's best
        kept rows anywhere, as for a query near no cluster, so there it gets a far query's candidates from every
        list (boxes keeping 3-10 % of 60k / 150k rows found 0.986 / 0.992 of their top 10 before: rows in lists
        ranked 103-150 of 234 when 103-144 were probed, and rows the codes ranked below the candidates).
        """
        faiss = _faiss()
        query = _unit(np.asarray(vector, dtype=np.float32)[None, :])
        params = faiss.IVFRaBitQSearchParameters()
        params.qb = QUERY_BITS
        sims = self._centroids @ query[0]  # once: for the probe rule and the lists probed
        nprobe, far, small = probes_of(sims, nprobe, len(self)), far_of(sims), small_table(len(self))
        growth = MAX_CANDIDATE_GROWTH if far else 1
        if small and (far or among is not None):  # covers_all, or a filter on a small index: every list
            nprobe, growth = self.lists, MAX_CANDIDATE_GROWTH
        packed = None
        if among is not None:
            if len(among) == 0:
                return np.zeros(0, dtype=np.int64)
            if not small:
                nprobe = min(self.lists, math.ceil(nprobe * len(self) / len(among)))
            bits = np.zeros(len(self), dtype=bool)
            bits[among] = True
            packed = np.packbits(bits, bitorder="little")  # kept alive until the search returns
            params.sel = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(packed))
        params.nprobe = nprobe
        found = self._search_lists(query, int(n * growth), closest(sims, nprobe), sims, params)
        return found[found >= 0]

    def _search_lists(self, query: np.ndarray, n: int, lists: np.ndarray, sims: np.ndarray, params) -> np.ndarray:
        """The ``n`` best positions for ``query`` (1 x D) in ``lists`` (best first; ``sims``: the query's similarity
        to every centroid) under ``params``: FAISS's search with the lists chosen here (its Python wrapper of that
        call takes no parameters), so the centroids are compared with the query once, not again by FAISS."""
        faiss = _faiss()
        labels, distances = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
        centroid_sims = np.ascontiguousarray(sims[lists], dtype=np.float32)
        self._index.search_preassigned_c(1, faiss.swig_ptr(query), n, faiss.swig_ptr(lists),
                                         faiss.swig_ptr(centroid_sims), faiss.swig_ptr(distances),
                                         faiss.swig_ptr(labels), False, params)
        return labels


def probe_count(centroids: np.ndarray, query: np.ndarray, nprobe: int, rows: int) -> int:
    """How many of the lists of ``centroids`` (lists x D) a search for ``query`` (a unit vector) over ``rows``
    rows probes: the rule of :meth:`IvfIndex.probes`, for any IVF index whose centroids are known (Lance's too)."""
    return probes_of(centroids @ query, nprobe, rows)


def probes_of(sims: np.ndarray, nprobe: int, rows: int) -> int:
    """:func:`probe_count` from the query's similarities to each list's centroid (``sims``)."""
    lists = len(sims)
    per_list = max(1.0, rows / lists)
    most = min(math.ceil(lists * MAX_PROBED_SHARE), math.ceil(MAX_PROBED_ROWS / per_list))
    return min(lists, max(least_probes(lists, nprobe), min(close_lists(sims), most)))


def close_lists(sims: np.ndarray) -> int:
    """How many lists' centroids are about as close to the query as the nearest one (:data:`PROBE_SPREAD`), from
    the query's similarities to each (``sims``)."""
    return int(np.count_nonzero(sims >= sims.max() - PROBE_SPREAD * sims.std()))


def far_of(sims: np.ndarray) -> bool:
    """Whether a query whose similarities to the lists' centroids are ``sims`` is near no cluster: more than
    :data:`FAR_CLOSE_LISTS` lists are about as close to it as the nearest (:func:`close_lists`)."""
    return close_lists(sims) > FAR_CLOSE_LISTS


def small_table(rows: int) -> bool:
    """Whether a table of ``rows`` rows is small enough for a far query (or, in an index, a filter) to cover every
    row or list: at most :data:`FAR_SCAN_ROWS`."""
    return rows <= FAR_SCAN_ROWS


def covers_all(sims: np.ndarray, rows: int) -> bool:
    """Whether a search for a query whose similarities to the lists' centroids are ``sims``, of a table of ``rows``
    rows, covers every row or list (:data:`FAR_SCAN_ROWS`): the query is near no cluster and the table small."""
    return small_table(rows) and far_of(sims)


def closest(sims: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lists of highest similarity ``sims``, best first (int64, as FAISS takes them)."""
    top = np.argpartition(-sims, count - 1)[:count] if count < len(sims) else np.arange(len(sims))
    return top[np.argsort(-sims[top], kind="stable")].astype(np.int64)


def least_probes(lists: int, nprobe: int) -> int:
    """The fewest of ``lists`` lists a search probes: ``nprobe``, at least :data:`MIN_PROBED_SHARE` of them."""
    return max(int(nprobe), math.ceil(lists * MIN_PROBED_SHARE), 1)


def row_bytes(dim: int) -> int:
    """The index's memory per row of ``dim`` dimensions: the code and the id."""
    faiss = _faiss()
    return int(faiss.IndexIVFRaBitQ(faiss.IndexFlatIP(dim), dim, 1, faiss.METRIC_INNER_PRODUCT, True,
                                    CODE_BITS).code_size) + 8


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous rows of norm 1 (zero rows stay zero)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


__all__ = ["IvfIndex", "close_lists", "covers_all", "far_of", "least_probes", "probe_count", "probes_of",
           "row_bytes", "small_table"]
