"""In-memory tables: one version of a tile table held in memory (resident), for long-lived searchers (the web app).

A search through Lance alone pays, per query, for Lance's scanner, for reading the full vectors of the
``refine_factor * k`` candidates it re-ranks and for fetching the answer's columns from the data files: at 1M
rows that is most of its latency (BENCHMARKS.md, Query). A :class:`ResidentTable` keeps what search needs in
memory, in one of two tiers chosen by what fits (:func:`choose_tier`):

- ``memory``: the result columns (~130 MB per million rows) and the float32 vectors (2 KB per 512-d row):
  re-ranking and the answer's columns come from memory;
- ``compact`` (tables too large for that): the index and the fixed-width columns (bounds, window, times),
  ~250 bytes per 512-d row; the candidates' vectors and the answer's texts (id, uri) are read from the table
  version on demand (a positional ``take`` of ~100 rows, :class:`TableRows`).

Either way an indexed table gets an in-process IVF index (:mod:`rsclip.search.ivf_index`) that proposes
candidates; their scores are the exact cosines of the full vectors, as an exact scan computes them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rsclip.table import datasets, tiles
from rsclip.table.rows import vectors_of
from rsclip.table.index import ivf_lists
from rsclip.search.filters import bbox_mask
from rsclip.search.ivf_index import IvfIndex, row_bytes
from rsclip.search.row_stores import COMPACT, MEMORY, SCAN_ROWS, MemoryRows, TableRows

log = logging.getLogger(__name__)

ROW_ID = "_rowid"
# Resident copies kept per process, the one being loaded included: each is a full copy of its table, so at
# most two exist at once (the version serving searches and the next one loading).
KEEP = 2
# The largest resident copy (bytes) by default, and at most this share of the machine's (or container's)
# memory; a table whose compact copy is larger still is searched through Lance (`cache.max_bytes`,
# `rsclip serve --resident-max-gb`).
MAX_BYTES = 8 * 1024**3
MEMORY_SHARE = 0.4
ROW_OVERHEAD_BYTES = 160
# Per row of a compact copy besides its index entry: four float64 bounds, the window (4 int32), three time and
# quality columns (8 bytes each), the CRS (a dictionary index) and the row-id lookup (12 bytes).
COMPACT_ROW_BYTES = 4 * 8 + 4 * 4 + 3 * 8 + 4 + 12
# A search over at most this many rows (the version's, or those its filters keep) ranks them all exactly: a
# copy this small gets no in-process index, and a search through Lance scans instead of probing its index. An
# index there loses rows: a far query (a text across CLIP's modality gap) found 0.55 of its true top 10 through
# the resident index and 0.57-0.62 through Lance's at 20k rows, where the probe rule's share cap binds. In memory
# the exact scan costs about what probing does (1.6 ms at 20k rows, one BLAS thread); through Lance ~3x (86-101
# ms against 26-34), paid by one-off commands, not by the services (BENCHMARKS.md, Query).
EXACT_ROWS = 20_000
# Seconds a search waits for another thread's first load of a table before searching without it.
LOAD_WAIT_S = 300.0


def compact_columns(schema, columns) -> list[str]:
    """The ``columns`` a compact copy keeps in memory: fixed-width numbers and times, and the CRS (few distinct
    texts, dictionary-encoded); the other texts (id, uri) are read for the answer's rows only."""
    def small(field) -> bool:
        return (field.name == tiles.CRS or pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                or pa.types.is_timestamp(field.type))
    return [c for c in columns if small(schema.field(c))]


class ResidentTable:
    """What a search of one Lance dataset version needs, in memory in ``tier`` (module doc), by row position.

    Loaded in one pass over the version (after a sample for the index's training, when it gets one); the
    index is built when the version has an ANN index on its vectors (``indexed``) or the tier is compact
    (which cannot rank all rows exactly), and the version has more than :data:`EXACT_ROWS` rows.
    """

    def __init__(self, dataset, columns: tuple[str, ...], *, indexed: bool, tier: str = MEMORY):
        n = dataset.count_rows()
        self.dataset = dataset  # the version it holds
        self.column_names = tuple(columns)
        self.index = _new_index(dataset, n) if (indexed or tier == COMPACT) and n > EXACT_ROWS else None
        self.indexed = self.index is not None
        kept = list(columns) if tier == MEMORY else compact_columns(dataset.schema, columns)
        row_ids, vectors, parts = self._scan(dataset, n, kept, keep_vectors=tier == MEMORY)
        table = pa.Table.from_batches(parts) if parts else pa.table(
            {c: pa.array([], dataset.schema.field(c).type) for c in kept})
        if tier == COMPACT and tiles.CRS in kept:
            table = table.set_column(kept.index(tiles.CRS), tiles.CRS, pc.dictionary_encode(table.column(tiles.CRS)))
        # one chunk per column: Arrow's take on a many-chunk column concatenates it first (~20 ms at 1M rows)
        self.columns = table.combine_chunks()
        del table, parts
        _give_back_freed_memory()
        # what each answer's rows need besides a take: the columns read from the table, those decoded
        self._missing = [c for c in self.column_names if c not in self.columns.column_names]
        self._encoded = [f.name for f in self.columns.schema if pa.types.is_dictionary(f.type)]
        self.store = MemoryRows(vectors) if tier == MEMORY else TableRows(dataset)
        # bounds as float arrays, null -> NaN (never inside a box, as SQL's NULL); float64 columns without
        # nulls are views of the Arrow columns, not copies
        self._bounds = {c: self.columns.column(c).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                        for c in tiles.BOUNDS_COLUMNS if c in kept}
        self._copied = sum(self._bounds[c].nbytes for c in self._bounds  # the bounds that are not views
                           if self.columns.column(c).null_count or not pa.types.is_float64(self.columns.column(c).type))
        order = np.argsort(row_ids, kind="stable")
        self._order = order.astype(np.int32) if n < 2**31 else order
        self._sorted_ids = row_ids[order]

    def _scan(self, dataset, n: int, kept: list[str], *, keep_vectors: bool):
        """One pass: row ids, the vectors (kept, or only fed to the index) and the ``kept`` columns."""
        row_ids = np.empty(n, dtype=np.uint64)
        vectors: np.ndarray | None = None
        parts, filled = [], 0
        for batch in dataset.to_batches(columns=[*kept, tiles.VECTOR], with_row_id=True, batch_size=SCAN_ROWS):
            m = batch.num_rows
            flat = vectors_of(batch.column(tiles.VECTOR))
            if keep_vectors:
                if vectors is None:
                    vectors = np.empty((n, flat.shape[1]), dtype=np.float32)
                vectors[filled : filled + m] = flat
            if self.index is not None:
                self.index.add(flat)
            row_ids[filled : filled + m] = batch.column(ROW_ID).to_numpy()
            # copies: a column of a scanned batch shares its buffers with the batch's vectors, and keeping it
            # kept them all (~3 KB a row at 512-d; measured 1.6 GB per 0.5M rows)
            kept_columns = batch.select(kept)
            parts.append(pa.RecordBatch.from_arrays([pa.concat_arrays([c]) for c in kept_columns.columns],
                                                    schema=kept_columns.schema))
            filled += m
        if filled != n:
            raise RuntimeError(f"table changed while being loaded: {filled} rows read, {n} counted")
        return row_ids, vectors if vectors is not None else np.zeros((0, 0), dtype=np.float32), parts

    @property
    def kind(self) -> str:
        """The tier: :data:`MEMORY` or :data:`COMPACT`."""
        return self.store.kind

    def __len__(self) -> int:
        return len(self._sorted_ids)

    @property
    def nbytes(self) -> int:
        return int(self.store.nbytes + self.columns.nbytes + self._order.nbytes + self._sorted_ids.nbytes
                   + self._copied + (self.index.nbytes if self.index else 0))

    def positions(self, row_ids) -> np.ndarray:
        """Row positions (scan order of the version) of Lance row ids of this version."""
        ids = np.asarray(row_ids, dtype=np.uint64)
        at = np.searchsorted(self._sorted_ids, ids)
        if len(ids) and (at.max(initial=0) >= len(self._sorted_ids) or (self._sorted_ids[at] != ids).any()):
            raise KeyError("row ids not in this version of the table")
        return self._order[at].astype(np.int64)

    def intersecting(self, bbox) -> np.ndarray:
        """Boolean mask of the rows whose bounds intersect ``(lon_min, lat_min, lon_max, lat_max)`` (touching
        counts; rows without bounds never match), as :func:`rsclip.search.filters.bbox_sql` in SQL."""
        return bbox_mask(self._bounds, bbox)

    def nearest(self, vector: np.ndarray, n: int, nprobe: int, among: np.ndarray | None = None) -> np.ndarray:
        """Candidate positions from the index (:meth:`IvfIndex.search`)."""
        return self.index.search(vector, n, nprobe, among)

    def top(self, positions: np.ndarray, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(positions, vectors)``: the ``k`` rows among ``positions`` most similar to ``vector``, best first, and
        their stored vectors where scoring read them from the table (the compact tier), else None."""
        q = np.asarray(vector, dtype=np.float32)
        scores, vectors = self.store.scores(positions, q / max(float(np.linalg.norm(q)), 1e-12))
        keep = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        order = keep[np.argsort(-scores[keep], kind="stable")]
        return positions[order], None if vectors is None else vectors[order]

    def answer(self, positions: np.ndarray, vectors: np.ndarray | None = None) -> tuple[pa.Table, np.ndarray]:
        """The result columns and the stored vectors of the rows at ``positions``, in that order (``vectors``:
        those vectors, already read). A compact copy reads what it does not hold (the texts, the vectors unless
        given) in one take of the table version."""
        positions = np.asarray(positions, dtype=np.int64)
        held = self.columns.take(pa.array(positions, type=pa.int64()))
        compact = self.store.kind == COMPACT
        wanted = [*self._missing, *([tiles.VECTOR] if compact and vectors is None else [])]
        read = self.dataset.take(positions, columns=wanted) if wanted else None
        for name in self._missing:
            held = held.append_column(name, read.column(name))
        for name in self._encoded:
            at = held.schema.get_field_index(name)
            held = held.set_column(at, name, held.column(at).cast(held.schema.field(at).type.value_type))
        if vectors is None:
            vectors = vectors_of(read.column(tiles.VECTOR)) if compact else self.store.at(positions)
        return held.select(list(self.column_names)), vectors


def _give_back_freed_memory() -> None:
    """Return what a load freed to the system now: Arrow's pool and glibc keep freed pages for reuse, and a 10M-row
    compact load left its process at 4.8 GB for a 2.3 GB copy until later allocations made them let go (3.4 GB;
    BENCHMARKS.md, Query)."""
    pa.default_memory_pool().release_unused()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def _new_index(dataset, n: int) -> IvfIndex:
    """An index for ``dataset``'s vectors, trained on an evenly spread sample of its rows."""
    dim = dataset.schema.field(tiles.VECTOR).type.list_size
    lists = ivf_lists(n)
    index = IvfIndex(dim, lists)
    sample = np.sort(np.random.default_rng(0).choice(n, IvfIndex.training_rows(lists, n), replace=False))
    index.train(vectors_of(dataset.take(sample, columns=[tiles.VECTOR]).column(tiles.VECTOR)))
    return index


def estimated_bytes(dataset, tier: str = MEMORY) -> int:
    """Memory a resident copy of ``dataset`` would take in ``tier``: the vectors plus ~160 bytes of columns
    per row (memory), or the index entry and the compact columns (compact); the index is counted in both."""
    dim = dataset.schema.field(tiles.VECTOR).type.list_size
    index = row_bytes(dim)
    per_row = dim * 4 + ROW_OVERHEAD_BYTES + index if tier == MEMORY else index + COMPACT_ROW_BYTES
    return int(dataset.count_rows() * per_row)


def memory_limit() -> int:
    """The machine's memory, or the container's (cgroup v2 ``memory.max``) when that is lower (bytes)."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text.isdigit():
            limit = min(limit, int(text))
    except OSError:
        pass
    return int(limit)


def choose_tier(dataset, max_bytes: int) -> str | None:
    """The tier a resident copy of ``dataset`` takes under ``max_bytes``: memory when it fits, else compact when
    that fits, else None (search through Lance)."""
    for tier in (MEMORY, COMPACT):
        if estimated_bytes(dataset, tier) <= max_bytes:
            return tier
    return None


class ResidentCache:
    """Resident copies of table versions, at most ``keep`` in memory (the one being loaded included) and
    never more than ``max_bytes`` each (by default :data:`MAX_BYTES`, or :data:`MEMORY_SHARE` of the memory
    when that is less).

    A version is loaded outside the cache's lock, once, by the first thread that asks for it; while it loads,
    other threads asking for it get the newest version of that table already in memory (their searches run
    on that snapshot) or, when none is, wait for the load. With ``wait`` False (a server: a load takes ~100 s
    per million rows) the first asker does not load it itself but starts a background load, and no asker
    waits: until the copy is in memory :meth:`get` returns the older one, or None (search through Lance). Each copy takes the tier :func:`choose_tier` gives
    it; a table too large for ``max_bytes`` even compact is not loaded: :meth:`get` returns None and searches
    go through Lance.
    """

    def __init__(self, keep: int = KEEP, max_bytes: int | None = None, loader=None, wait: bool = True):
        self.keep, self.wait = max(1, keep), wait
        self.max_bytes = max_bytes if max_bytes is not None else min(MAX_BYTES, int(MEMORY_SHARE * memory_limit()))
        self._loader = loader or ResidentTable  # (dataset, columns, indexed=, tier=) -> ResidentTable
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

    def get(self, table, columns: tuple[str, ...], dataset=None) -> ResidentTable | None:
        """The resident copy of ``table``'s current version (``dataset``, when the caller has it), or of its
        newest version in memory while the current one loads; None when the table is too large to keep
        (search through Lance instead)."""
        dataset = dataset if dataset is not None else datasets.dataset_of(table)
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
                tier = choose_tier(dataset, self.max_bytes)
                if tier is None:
                    return None
                self._make_room(dataset.uri, columns)
                loading = self._loading[key] = threading.Event()
                owner = True
            else:
                owner = False
        if not owner:
            if self.wait:
                loading.wait(LOAD_WAIT_S)
            with self._lock:
                return self._loaded.get(key) or self._newest_of(dataset.uri, columns)
        if not self.wait:  # load in the background; meanwhile the caller searches what it can
            threading.Thread(target=self._load_quietly, args=(key, dataset, table, columns, tier, loading),
                             name=f"resident-load-{dataset.version}", daemon=True).start()
            return older
        return self._load(key, dataset, table, columns, tier, loading)

    def loading(self, uri: str) -> bool:
        """Whether a version of the table at ``uri`` is being loaded."""
        with self._lock:
            return any(k[0] == uri for k in self._loading)

    def _load_quietly(self, *args) -> None:
        try:
            self._load(*args)
        except Exception:  # the next search starts another load, and searches through Lance meanwhile
            log.exception("loading a resident copy failed")

    def _load(self, key, dataset, table, columns, tier: str, done: threading.Event) -> ResidentTable:
        try:
            loaded = self._loader(dataset, columns, indexed=tiles.has_vector_index(table), tier=tier)
            with self._lock:
                self._loaded[key] = loaded
            return loaded
        finally:
            with self._lock:
                self._loading.pop(key, None)
            done.set()


cache = ResidentCache()


def resident_table(table, columns: tuple[str, ...], dataset=None) -> ResidentTable | None:
    """The process's resident copy of ``table`` (:meth:`ResidentCache.get` of :data:`cache`)."""
    return cache.get(table, columns, dataset)
