"""Searchers: the k rows of a tile table nearest to a vector under :class:`~rsclip.search.filters.Filters`.

Two implementations of one interface (:class:`Searcher`):

- :class:`LanceSearcher` searches the table's Lance dataset directly (the index when there is one, an exact
  scan of the filtered rows when the filter keeps few) and ranks the Arrow columns it reads: LanceDB's
  query builder and ``to_pandas`` cost more than the search itself on a 10-row answer (BENCHMARKS.md, Query).
- :class:`ResidentSearcher` answers from an in-memory copy of the table version (:mod:`rsclip.search.memory_table`,
  for long-lived processes such as the web app): the index is asked for candidate row ids only, re-ranking,
  the answer's columns and the box test run in memory.

:func:`find` adds what neither does alone: the exact row tests of the filters and the rows a caller
leaves out, fetching more candidates when needed so that ``k`` rows come back whenever ``k`` qualify. It answers
Arrow rows (:class:`Found`); :func:`search` and the library's query functions hand them to pandas once, while a
service answering JSON never builds a frame.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from rsclip.table import datasets, index as table_index, tiles
from rsclip.table.rows import vectors_of
from rsclip.errors import InvalidInput
from rsclip.search.filters import Filters
from rsclip.search.lance_probes import Probing, probing
from rsclip.search import memory_table
from rsclip.search.memory_table import COMPACT, MEMORY, ROW_ID, resident_table
from rsclip.search.slots import searching

log = logging.getLogger(__name__)

MAX_K = 10_000
SCORE = "score"
RESULT_COLUMNS = (tiles.ID, tiles.URI, SCORE, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS)
FETCH_COLUMNS = tuple(c for c in RESULT_COLUMNS if c != SCORE)
# Columns results carry after RESULT_COLUMNS when the table has them (older tables lack them).
OPTIONAL_COLUMNS = tiles.TIME_COLUMNS
DISTANCE = "_distance"  # Lance's column of the search's distances, asked for by name (else it warns)
# ANN search settings used when the table has a vector index (ignored by an exact scan). Chosen on
# bench/query.py (see BENCHMARKS.md) for the PQ codes of earlier indexes, whose recall@10 the re-ranking of
# refine_factor * k candidates with the full vectors lifted above 0.95 (20 gave 1.0 at 200k rows but 0.937 at
# 1M; 40 gave 0.99). The 8-bit codes of today's IVF_SQ index keep 1.0 at 1M rows with 10 or 40 (sweep of
# 2026-12-05); 40 stays for the PQ indexes of tables not rebuilt yet.
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 40
# A resident copy's own index (rsclip.search.ivf_index) ranks candidates with 2-bit RaBitQ codes of the full
# vector, and each candidate is one vector read: a gather in memory, a read of the table in the compact tier.
# 20 x k of them hold the exact top k at recall@10 0.999 at 1M rows, 10 x k at 0.995 (BENCHMARKS.md, Query).
RESIDENT_REFINE_FACTOR = {MEMORY: 20, COMPACT: 10}
# ... from this many of its lists: 10 hold the exact top 10 at 1M rows as well as 20 do (BENCHMARKS.md).
RESIDENT_NPROBES = 10
# A resident search whose filters keep at most this many rows ranks them all in memory: at 1M rows that is
# at most one pass over the vectors (~110 ms); more go to the index, restricted to the rows kept.
RESIDENT_EXACT_ROWS = 1_000_000
# The same for a compact resident copy, whose vectors are read from the table: a few ms per thousand rows.
COMPACT_EXACT_ROWS = 4_096
# Lance/DataFusion texts that mean the caller's SQL filter is wrong, not that the table is broken.
# Evaluating the filter on the rows can fail too (a cast of a text to a number, a division by zero): that is
# the filter's fault as well.
_SQL_ERROR_MARKERS = ("parse", "Parse", "SQL", "sql", "No field named", "Schema error", "Invalid user input",
                      "Error during planning", "not found in schema", "Invalid argument",
                      "Error applying filter expression", "Error resolving filter expression")
# Where in its Rust sources Lance raised an error (", /root/.cargo/registry/src/.../logical_expr.rs:23:88"): a
# path of the machine that built Lance, which says nothing to the user.
_RUST_SOURCE = re.compile(r",?\s*\S+\.rs:\d+(?::\d+)?")

Ranker = Callable[[int], pa.Table]


@dataclass(frozen=True)
class Found:
    """What a search found: its ``rows`` (Arrow, best first: :data:`RESULT_COLUMNS`, then the
    :data:`OPTIONAL_COLUMNS` fetched) and the ``path`` and ``note`` of the searcher that found them. Callers that
    want a frame ask :meth:`frame`; a service answering JSON reads the Arrow rows and never builds one."""

    rows: pa.Table
    path: str
    note: str

    def frame(self) -> pd.DataFrame:
        """The rows as a frame (times as UTC timestamps), the path and note in its ``attrs`` (``search_path``,
        ``search_note``)."""
        frame = as_frame(self.rows)
        frame.attrs.update(search_path=self.path, search_note=self.note)
        return frame


class Searcher(Protocol):
    """What a search needs of a table: how many rows it has, and a ranker for a vector under filters.
    ``path`` names the way it searches (``lance``, ``resident (memory)``, ``resident (compact)``); ``note``
    says, for people, anything unusual about how the search runs (empty when nothing is)."""

    table: object
    dataset: object  # the Lance dataset version searched (its schema names the columns filters may use)
    path: str
    note: str

    def row_count(self) -> int: ...

    def ranker(self, vector: np.ndarray, filters: Filters, *, exact: bool = False) -> Ranker:
        """A function ``n -> rows`` (Arrow) of the ``n`` best rows passing ``filters.sql()`` (best first, columns
        :data:`RESULT_COLUMNS`); the filters are evaluated once, whatever ``n`` is asked later."""
        ...


def checked_sql(run: Callable, where: str | None):
    """``run()``, turning Lance's complaints about an SQL filter into ``InvalidInput`` naming the filter."""
    try:
        return run()
    except Exception as exc:
        if where and any(marker in str(exc) for marker in _SQL_ERROR_MARKERS):
            first = _RUST_SOURCE.sub("", str(exc).strip().splitlines()[0])[:300]
            raise InvalidInput(f"the filter {where[:200]!r} is not valid SQL on the table's columns: {first}") from None
        raise


# Threads of the BLAS libraries in a process that serves searches (the web app, the API): one search's matrix
# products are small, and with two threads OpenBLAS spins the second core while it waits (at 1M rows a search
# cost 25 ms of CPU in 13 ms of wall time; 13 in 13 with one thread, BENCHMARKS.md "HTTP API"), so concurrent
# searches each get a core. Loading a resident copy (its k-means) is a few seconds slower on one.
SERVICE_BLAS_THREADS = 1
_serving = False  # whether this process has set its BLAS threads (serve_searches)


def serve_searches(resident_max_gb: float | None = None, searches_at_once: int | None = None) -> None:
    """Set this process up to serve searches: resident copies load in the background (Lance answers meanwhile),
    at most ``resident_max_gb`` each when given, the BLAS libraries run :data:`SERVICE_BLAS_THREADS`, and
    ``searches_at_once`` searches run together when given (the API's ``--workers``; else
    :func:`~rsclip.search.slots.search_slots`)."""
    global _serving
    memory_table.cache.wait = False
    if resident_max_gb is not None:
        memory_table.cache.max_bytes = int(resident_max_gb * 1024**3)
    if searches_at_once is not None:
        searching.allow(searches_at_once)
    if not _serving:  # finding the loaded libraries takes milliseconds: once per process
        service_blas_threads()
        _serving = True


def service_blas_threads():
    """The BLAS libraries set to :data:`SERVICE_BLAS_THREADS`: for the whole process as called (what
    :func:`serve_searches` does), until the block ends as a ``with`` (what the benchmarks' serving arms do)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(SERVICE_BLAS_THREADS, user_api="blas")


def nearest_args(vector: np.ndarray, k: int, *, where: str | None, nprobes: int = DEFAULT_NPROBES,
                 exact: bool = False, refine_factor: int | None = None, metric: str = tiles.METRIC) -> dict:
    """Lance's ``nearest`` argument for a search of ``k`` rows (``metric``: the vector index's, through it)."""
    nearest: dict = {"column": tiles.VECTOR, "q": np.asarray(vector, dtype=np.float32), "k": int(k),
                     "metric": metric}
    if exact:
        nearest["use_index"] = False
        return nearest
    nearest["minimum_nprobes"] = nprobes
    if not where:
        nearest["maximum_nprobes"] = nprobes
    if refine_factor:
        nearest["refine_factor"] = refine_factor
    return nearest


def fetch_columns(table) -> tuple[str, ...]:
    """The columns a search of ``table`` (a table or its Lance dataset) fetches: :data:`FETCH_COLUMNS` and the
    optional ones it has."""
    names = set(table.schema.names)
    return FETCH_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in names)


def cosines(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The scores answers carry: cosines of the rows of ``vectors`` with ``query``, in float64 from their float32
    values (the products are exact) summed in one fixed order, so every path (Lance, either resident tier, a
    service or this process) reports the same score for the same stored vector and query, to the last bit."""
    v = np.asarray(vectors, dtype=np.float32).astype(np.float64)
    q = np.asarray(query, dtype=np.float32).astype(np.float64)
    if v.ndim != 2 or not len(v):
        return np.zeros(len(v), dtype=np.float64)
    norms = np.sqrt((v * v).sum(axis=1)) * np.sqrt((q * q).sum())
    return (v * q).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


def ranked_rows(columns: pa.Table, score: np.ndarray) -> pa.Table:
    """:data:`RESULT_COLUMNS` (then the :data:`OPTIONAL_COLUMNS` fetched), best score first (then by id: one
    order whichever path found them), from Arrow ``columns`` (the fetched columns) and their scores. Built in
    Arrow: a frame built a column at a time cost ~2.5 ms per answer, more than the search."""
    score = np.asarray(score, dtype=np.float64)
    order = rank_order(score, lambda: columns.column(tiles.ID).to_numpy(zero_copy_only=False))
    names = [*RESULT_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in columns.column_names)]
    if order is not None:
        columns, score = columns.take(pa.array(order, type=pa.int64())), score[order]
    return columns.append_column(SCORE, pa.array(score, type=pa.float64())).select(names)


def rank_order(score: np.ndarray, ids: Callable[[], np.ndarray]) -> np.ndarray | None:
    """The order of rows by ``score`` descending, then by ``ids()`` (read only when two scores tie), or None when
    the rows are in that order already (a resident search ranks them so: no reordering, ~0.1 ms an answer)."""
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    if len(ranked) > 1 and (ranked[1:] == ranked[:-1]).any():
        order = np.lexsort((ids(), -score))
    return None if (order == np.arange(len(order))).all() else order


def as_frame(rows: pa.Table) -> pd.DataFrame:
    """Ranked rows as a frame, handed to pandas once, on the calling thread: Arrow's thread pool cost ~0.4 ms a
    call, more than converting 10 to 10,000 rows (0.23 ms for 10 rows instead of 0.62, BENCHMARKS.md "The table
    opened once")."""
    return rows.to_pandas(use_threads=False)


class LanceSearcher:
    """Searches the table's Lance dataset (the current version, kept open per process); ``nprobes`` (the fewest
    lists probed: more for a query near no cluster, :mod:`rsclip.search.lance_probes`) and ``refine_factor``
    tune the ANN index's search."""

    def __init__(self, table, *, nprobes: int = DEFAULT_NPROBES, refine_factor: int | None = DEFAULT_REFINE_FACTOR):
        self.table = table
        self.dataset = datasets.dataset_of(table)
        self.nprobes, self.refine_factor = nprobes, refine_factor
        self.path, self.note = "lance", ""

    def row_count(self) -> int:
        return self.dataset.count_rows()

    def ranker(self, vector: np.ndarray, filters: Filters, *, exact: bool = False) -> Ranker:
        where = filters.sql()
        index = None if exact else table_index.vector_index(self.dataset)  # asked once: from the manifest
        if index is not None:  # few rows, the table's or those the filter keeps, are scanned exactly
            count = checked_sql(lambda: self.dataset.count_rows(filter=where or None), where)
            exact = count <= memory_table.EXACT_ROWS
        probe = Probing(tiles.METRIC, self.nprobes) if exact else probing(self.dataset, vector, self.nprobes, index)

        def rank(n: int) -> pa.Table:
            nearest = nearest_args(vector, n, where=where, exact=exact, nprobes=probe.nprobes,
                                   refine_factor=self.refine_factor, metric=probe.metric)
            result = checked_sql(lambda: self.dataset.to_table(
                columns=[*fetch_columns(self.table), tiles.VECTOR, DISTANCE], nearest=nearest, filter=where,
                prefilter=bool(where)), where)
            return ranked_rows(result, cosines(vectors_of(result.column(tiles.VECTOR)), vector))
        return rank


class ResidentSearcher:
    """Searches a resident copy of the table's current version (loaded on first use, kept per process; its
    tier says where the vectors are, :mod:`rsclip.search.memory_table`): its index proposes
    ``refine_factor * k`` candidates (by default :data:`RESIDENT_REFINE_FACTOR` of its tier) from ``nprobes``
    lists, their exact scores rank them; a query near no cluster of a memory copy of at most
    :data:`~rsclip.search.ivf_index.FAR_SCAN_ROWS` rows ranks every row (:meth:`far_and_few`)."""

    def __init__(self, table, rows, *, nprobes: int = RESIDENT_NPROBES,
                 refine_factor: int | None = None, current: int | None = None):
        self.table, self.rows, self.dataset = table, rows, rows.dataset
        self.nprobes = nprobes
        self.refine_factor = RESIDENT_REFINE_FACTOR[rows.kind] if refine_factor is None else refine_factor
        current = datasets.dataset_of(table).version if current is None else current
        self.path = f"resident ({rows.kind})"
        self.note = "" if rows.dataset.version == current else (
            f"searching table version {rows.dataset.version} while version {current} loads into memory")

    def row_count(self) -> int:
        return len(self.rows)

    @property
    def exact_rows(self) -> int:
        """The most filtered rows ranked exactly (their vectors in memory, or read from the table)."""
        return RESIDENT_EXACT_ROWS if self.rows.kind == MEMORY else COMPACT_EXACT_ROWS

    def candidates(self, filters: Filters, exact: bool) -> np.ndarray | None:
        """The sorted row positions the filters keep (None: every row).

        The box is tested in memory and the other filters by Lance; without an index every row passes to the
        exact ranking.
        """
        rows = self.rows
        found = None if filters.bbox is None else np.flatnonzero(rows.intersecting(filters.bbox))
        where = filters.row_sql()
        if where:
            ids = checked_sql(lambda: rows.dataset.to_table(columns=[], with_row_id=True, filter=where), where)
            matching = np.sort(rows.positions(ids.column(ROW_ID).to_numpy()))
            found = matching if found is None else np.intersect1d(found, matching, assume_unique=True)
        if found is None and (exact or not rows.indexed):
            found = np.arange(len(rows))
        return found

    def far_and_few(self, vector: np.ndarray) -> bool:
        """Whether ``vector`` is near no cluster and the copy small enough to rank all its rows for it
        (:data:`~rsclip.search.ivf_index.FAR_SCAN_ROWS`, in memory)."""
        rows = self.rows
        return rows.indexed and rows.kind == MEMORY and rows.index.covers_all(vector)

    def ranker(self, vector: np.ndarray, filters: Filters, *, exact: bool = False) -> Ranker:
        rows, exact = self.rows, exact or self.far_and_few(vector)
        kept = self.candidates(filters, exact)
        ranked_exactly = not rows.indexed or (kept is not None and (exact or len(kept) <= self.exact_rows))

        def rank(n: int) -> pa.Table:
            positions = kept
            if not ranked_exactly:  # the index proposes refine_factor * n candidates among the kept rows
                positions = rows.nearest(vector, n * max(1, self.refine_factor or 1), self.nprobes, among=kept)
            columns, vectors = rows.answer(*rows.top(positions, vector, n))
            return ranked_rows(columns, cosines(vectors, vector))
        return rank


def searcher_for(table, *, resident: bool = False) -> Searcher:
    """The searcher for ``table``: its resident copy when ``resident`` and the copy fits in memory in either
    tier (see :class:`~rsclip.search.memory_table.ResidentCache`), else Lance (its ``note`` then says why)."""
    if resident:
        dataset = datasets.dataset_of(table)  # asked once: each question to LanceDB costs ~0.1 ms
        rows = resident_table(table, fetch_columns(dataset), dataset=dataset)
        if rows is not None:
            return ResidentSearcher(table, rows, current=dataset.version)
    searcher = LanceSearcher(table)
    if resident and memory_table.cache.loading(dataset.uri):
        searcher.note = "the table is loading into memory: searching through Lance meanwhile (slower)"
    elif resident:
        searcher.note = ("the table is larger than the in-memory limit, even compact: searching through Lance "
                         "(slower)")
        log.warning("%s: %s", table.name, searcher.note)
    return searcher


def search(searcher: Searcher, vector: np.ndarray, k: int, filters: Filters = Filters(), *,
           drop: Callable[[pd.DataFrame], np.ndarray] | None = None, extra: int = 0,
           exact: bool = False) -> pd.DataFrame:
    """The frame of :func:`find` (its path and note in the frame's ``attrs``)."""
    return find(searcher, vector, k, filters, drop=drop, extra=extra, exact=exact).frame()


def find(searcher: Searcher, vector: np.ndarray, k: int, filters: Filters = Filters(), *,
         drop: Callable[[pd.DataFrame], np.ndarray] | None = None, extra: int = 0, exact: bool = False) -> Found:
    """The ``k`` best rows under ``filters``, less the rows ``drop(frame)`` marks (at most ``extra`` of them).

    Candidates are fetched best first; when the filters' exact tests (``near=``) drop rows, the fetch grows
    until ``k`` pass or the filtered table is exhausted, so ``k`` rows come back whenever ``k`` qualify. Those
    tests and ``drop`` see the candidates as a frame; a search that needs neither builds none. At most
    :func:`~rsclip.search.slots.search_slots` searches run at once in a process (:class:`searching`).
    """
    with searching():
        return _find(searcher, vector, k, filters, drop=drop, extra=extra, exact=exact)


def _find(searcher: Searcher, vector: np.ndarray, k: int, filters: Filters, *,
          drop: Callable[[pd.DataFrame], np.ndarray] | None, extra: int, exact: bool) -> Found:
    filters = filters.on(searcher.dataset)
    rank = searcher.ranker(vector, filters, exact=exact)
    if filters.exact_in_sql and drop is None:
        return Found(rank(k), searcher.path, searcher.note)
    limit = k + extra if filters.exact_in_sql else min(MAX_K * 4, max(2 * k, k + 16) + extra)
    total = searcher.row_count()
    while True:
        found = rank(limit)
        frame = as_frame(found)
        mask = filters.keep(frame, searcher.table)
        if drop is not None:
            mask &= ~drop(frame)
        kept = found.filter(pa.array(mask, type=pa.bool_()))
        if kept.num_rows >= k or found.num_rows < limit or limit >= total:
            return Found(kept.slice(0, k), searcher.path, searcher.note)
        limit *= 4
