"""Index upkeep for a tile table: the IVF_SQ vector index and BTREE scalar indexes on id, uri, bounds, datetime.

Build once after a large write, refresh after appends. LanceDB answers a query from the index for the rows
it covers and by an exact flat scan for rows appended since, so new tiles are searchable immediately; a
refresh (:func:`refresh_indexes`) folds them into the index so the scan stays short. The vector index is built
for the dot product (:data:`INDEX_METRIC`: the cosine of unit vectors, with better lists for far queries), the
metric searches through it ask for, as an IVF_SQ index (:data:`INDEX_TYPE`: 8-bit codes of every dimension).

A refresh never lets Lance re-partition the vector index. Asked to optimize an IVF index without a count of
deltas to merge (as LanceDB's ``Table.optimize()`` asks), pylance 14 splits and joins its lists to Lance's own
target size: the ~1,000 lists of a 1M-row table became 31 (~32k rows each), every query scanned 20 of them
(3x slower) with codes trained for the old lists (recall@10 0.99 -> 0.89). Up to ~700k rows the 20 probed lists
cover about all of them and only latency shows it. ``rsclip`` folds new rows into the lists the index has, and a
build that finds an index with far fewer lists than :func:`ivf_lists` plans retrains it.

Sizing (see :func:`ivf_lists`): about ``sqrt(rows)`` IVF lists (k-means cost and the per-query list scan balance
there) and one byte per dimension (512 bytes per 512-d vector, a quarter of the vector itself). Searches read at
least ``searchers.DEFAULT_NPROBES`` lists and re-rank ``DEFAULT_REFINE_FACTOR * k`` candidates with the exact
vectors (bench/query.py, BENCHMARKS.md "Far queries through Lance": 64-byte PQ codes ranked a query near no
cluster too loosely for any refine factor, 0.61 at 1M rows, and near ones 0.93-0.97; the 8-bit codes 0.97 and 1.0,
and they train in 48 s instead of 139).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

from rsclip.table import keyed_writes, tiles
from rsclip.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np

VECTOR_INDEX = f"{tiles.VECTOR}_idx"
# The vector index's metric: the dot product. Stored vectors are unit length (the embedder normalises them), so it
# ranks rows as the cosine (tiles.METRIC) does; but an index built for the cosine picks the lists a search probes
# by the cosine to each list's centroid, the centroid normalised, which prefers diffuse lists, and a query near no
# cluster of the table (a text across CLIP's modality gap) then missed its best rows: recall@10 0.02 against 0.58
# with the dot product (20 lists, 200k rows of bench/query.py; BENCHMARKS.md "Far queries through Lance"). A
# search asks the metric its index was built with (rsclip.search.lance_probes): Lance scans every row otherwise.
INDEX_METRIC = "dot"
# ... with 8-bit scalar codes of every dimension (see the module doc for why not product quantization).
INDEX_TYPE = "IVF_SQ"
# Lance's switch that keeps an IVF index's centroids in its statistics (vector_centroids reads them there), set
# for the process unless the environment decided: without it every statistics call (LanceDB's index_stats too)
# logs a warning that a future release drops them.
CENTROIDS_ENV = "LANCE_INCLUDE_VECTOR_CENTROIDS"
os.environ.setdefault(CENTROIDS_ENV, "true")
SCALAR_COLUMNS = (tiles.ID, tiles.URI, *tiles.BOUNDS_COLUMNS, tiles.DATETIME)
# Below this many rows an exact scan is fast (a few ms) and exact, and the lists' k-means has few samples; the
# vector index is not built.
MIN_ANN_ROWS = 10_000
MAX_PARTITIONS = 4096
# Lance trains at most one list per this many rows (its k-means wants 256 samples a centroid).
MIN_ROWS_PER_PARTITION = 256
# Rebuild (retrain) the vector index when rows not covered by its training exceed this share of the table:
# lists trained for the old row count grow long and the centroids stop describing the data.
RETRAIN_UNINDEXED_SHARE = 0.5
# ... or when its lists are fewer than this share of what ivf_lists plans for the table (an index that
# another tool's optimize re-partitioned, see the module doc).
RETRAIN_PARTITION_SHARE = 0.5
# A refresh folds the vector index's new rows into its one index (a count makes Lance keep the lists).
VECTOR_DELTAS_TO_MERGE = 1
# Table versions older than this are pruned by a refresh (what LanceDB's optimize did by default).
KEEP_VERSIONS = timedelta(days=7)


@dataclass(frozen=True)
class IndexState:
    """What a tile table's indexes cover: rows, the vector index (None when absent), scalar indexes."""

    rows: int
    vector_index: str | None
    indexed_rows: int
    unindexed_rows: int
    scalar_indexes: tuple[str, ...] = ()
    num_partitions: int | None = None
    num_sub_vectors: int | None = None
    action: str = "none"
    details: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        """A JSON-friendly dict of the state."""
        return {
            "rows": self.rows,
            "vector_index": self.vector_index,
            "indexed_rows": self.indexed_rows,
            "unindexed_rows": self.unindexed_rows,
            "scalar_indexes": list(self.scalar_indexes),
            "num_partitions": self.num_partitions,
            "num_sub_vectors": self.num_sub_vectors,
            "action": self.action,
        }


def ivf_lists(rows: int) -> int:
    """The IVF lists of an index over ``rows`` vectors: ``round(sqrt(rows))`` clamped to [1, 4096] and to one per
    256 rows, as Lance caps them (so this is the count an index holds, and a re-partitioned index can be told)."""
    if rows < 1:
        raise InvalidInput(f"need rows >= 1, got {rows}")
    return max(1, min(MAX_PARTITIONS, round(math.sqrt(rows)), rows // MIN_ROWS_PER_PARTITION))


def _vector_index_config(table):
    for cfg in table.list_indices():
        if list(cfg.columns) == [tiles.VECTOR]:
            return cfg
    return None


def index_state(table, action: str = "none") -> IndexState:
    """The :class:`IndexState` of an open tile table."""
    rows = table.count_rows()
    scalar: list[str] = []
    vector_cfg = None
    for cfg in table.list_indices():
        if list(cfg.columns) == [tiles.VECTOR]:
            vector_cfg = cfg
        else:
            scalar.extend(cfg.columns)
    if vector_cfg is None:
        return IndexState(rows, None, 0, rows, tuple(sorted(scalar)), action=action)
    stats = table.index_stats(vector_cfg.name)
    compression = (vector_cfg.index_details or {}).get("compression", {}) or {}
    return IndexState(
        rows=rows,
        vector_index=f"{vector_cfg.name} ({stats.index_type}, {stats.distance_type})",
        indexed_rows=int(stats.num_indexed_rows),
        unindexed_rows=int(stats.num_unindexed_rows),
        scalar_indexes=tuple(sorted(scalar)),
        num_partitions=vector_partitions(table, vector_cfg.name),
        num_sub_vectors=compression.get("num_sub_vectors"),
        action=action,
        details=dict(vector_cfg.index_details or {}),
    )


def vector_partitions(table, name: str = VECTOR_INDEX) -> int | None:
    """The IVF list count of the vector index ``name`` of an open table (the fewest of its deltas), None when
    Lance does not say."""
    counts = [seg.get("num_partitions") for seg in table.to_lance().stats.index_stats(name).get("indices", [])]
    counts = [int(c) for c in counts if c]
    return min(counts) if counts else None


class VectorIndex(NamedTuple):
    """A Lance dataset's vector index: its ``name``, the ``metric`` it was built for and its segments' uuids."""

    name: str
    metric: str
    segments: tuple[str, ...]


def vector_index(dataset) -> VectorIndex | None:
    """The vector index of a Lance ``dataset`` (None without one), from the manifest: no index file is read."""
    for index in dataset.describe_indices():
        if list(index.field_names) == [tiles.VECTOR]:
            metric = str((index.details or {}).get("metric_type") or tiles.METRIC).lower()
            return VectorIndex(index.name, metric, tuple(sorted(str(s.uuid) for s in index.segments)))
    return None


def vector_centroids(dataset, name: str) -> "np.ndarray | None":
    """The centroids of the IVF lists of vector index ``name`` of a Lance ``dataset`` (lists x D float32, of its
    first segment: deltas share the lists), None when Lance does not say. Read from Lance's index statistics,
    which carry them while ``LANCE_INCLUDE_VECTOR_CENTROIDS`` is true (:data:`CENTROIDS_ENV`;
    ~0.5 s for 1,000 lists of 512-d, so read once per index)."""
    import numpy as np

    centroids = ((dataset.stats.index_stats(name).get("indices") or [{}])[0]).get("centroids")
    return np.asarray(centroids, dtype=np.float32) if centroids else None


def refresh_indexes(table, *, vector: bool = True) -> None:
    """Compact ``table``'s files, prune versions older than :data:`KEEP_VERSIONS`, and bring its indexes up to
    date: scalar indexes as Lance does, the vector index (unless ``vector`` is False: it is about to be
    retrained) by folding new rows into the lists it has, never re-partitioned (see the module doc). What
    LanceDB's ``optimize`` does, less its re-partitioning."""
    dataset = table.to_lance()  # one dataset: each commit below moves it to the version it wrote
    dataset.optimize.compact_files()
    dataset.cleanup_old_versions(older_than=KEEP_VERSIONS)
    indexes = table.list_indices()
    vectors = [cfg.name for cfg in indexes if list(cfg.columns) == [tiles.VECTOR]]
    scalar = [cfg.name for cfg in indexes if cfg.name not in vectors]
    if scalar:
        dataset.optimize.optimize_indices(index_names=scalar)
    if vectors and vector:
        dataset.optimize.optimize_indices(index_names=vectors, num_indices_to_merge=VECTOR_DELTAS_TO_MERGE)
    table.checkout_latest()


def build_index(
    db,
    table: str = tiles.DEFAULT_TABLE,
    *,
    rebuild: bool = False,
    min_rows: int = MIN_ANN_ROWS,
) -> IndexState:
    """Build or refresh the indexes of tile table ``table`` in ``db``.

    - No vector index and at least ``min_rows`` rows: train :data:`INDEX_TYPE` (:data:`INDEX_METRIC`, lists
      from :func:`ivf_lists`).
    - The files are compacted first, and existing indexes refreshed (:func:`refresh_indexes`: new rows folded
      in; the vector index keeps its lists), or the vector index is retrained when ``rebuild`` is set, the unindexed
      rows exceed half of the table, its lists are fewer than half of what :func:`ivf_lists` plans or it is
      of another type or metric (an index of earlier versions).
    - BTREE indexes on ``id``, ``uri``, the four bound columns and ``datetime`` are created when missing (and
      the table has the column) and refreshed with the rest.

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        table: the tile table.
        rebuild: retrain the vector index instead of refreshing it.
        min_rows: the fewest rows a vector index is trained for.

    Returns:
        The resulting :class:`IndexState` (``action`` says what was done).

    Raises:
        NotFound: the table does not exist.
        InvalidInput: the table has no rsclip metadata, or ``min_rows`` is below 1.
    """
    if min_rows < 1:
        raise InvalidInput(f"min_rows must be >= 1, got {min_rows}")
    # two jobs finishing on one table index it at the same time: the loser re-reads the state and goes on
    return keyed_writes.retry_on_conflict(lambda: _build_index_once(db, table, rebuild=rebuild, min_rows=min_rows))


def _build_index_once(db, table: str, *, rebuild: bool, min_rows: int) -> IndexState:
    from lancedb import index as lance_index  # a second to import: not for `rsclip --help`

    tbl = tiles.open_table(db, table)
    tiles.table_model(tbl)  # InvalidInput for a table without rsclip's metadata
    rows = tbl.count_rows()
    if rows == 0:
        return index_state(tbl, action="empty table: nothing to index")
    actions: list[str] = []
    existing = {c for cfg in tbl.list_indices() for c in cfg.columns}
    vector_cfg = _vector_index_config(tbl)
    retrain = rebuild or (vector_cfg is not None and _needs_retrain(tbl, vector_cfg.name, rows))
    # files compacted first, a first build too: the vector index is trained on them, never remapped after, and
    # a resident copy's reads of a few rows cost per fragment they touch (BENCHMARKS.md, Query: 10M rows)
    refresh_indexes(tbl, vector=not retrain)
    if (vector_cfg is None or retrain) and rows >= min_rows:
        partitions = ivf_lists(rows)
        tbl.create_index(tiles.VECTOR, config=lance_index.IvfSq(distance_type=INDEX_METRIC, num_partitions=partitions),
                         replace=True, name=VECTOR_INDEX)
        actions.append(f"built {INDEX_TYPE} ({partitions} lists, {INDEX_METRIC})")
    elif vector_cfg is None:
        actions.append(f"no vector index: {rows} rows < {min_rows}, exact scan is used")
    for column in SCALAR_COLUMNS:
        if column not in existing and column in tbl.schema.names:  # older tables lack newer columns
            tbl.create_index(column, config=lance_index.BTree(), replace=True, name=f"{column}_idx")
            actions.append(f"btree {column}")
    if existing:
        actions.append("refreshed")
    tbl.checkout_latest()
    return index_state(tbl, action="; ".join(actions))


def _needs_retrain(tbl, name: str, rows: int) -> bool:
    """An existing vector index is retrained when most rows came after its training, its lists are far fewer
    than planned (:data:`RETRAIN_UNINDEXED_SHARE`, :data:`RETRAIN_PARTITION_SHARE`) or it is not the index
    :data:`INDEX_TYPE` for :data:`INDEX_METRIC` builds (the cosine IVF_PQ of earlier versions)."""
    stats = tbl.index_stats(name)
    if stats.num_unindexed_rows > RETRAIN_UNINDEXED_SHARE * rows:
        return True
    if (str(stats.index_type).upper(), str(stats.distance_type).lower()) != (INDEX_TYPE, INDEX_METRIC):
        return True
    lists = vector_partitions(tbl, name)
    return lists is not None and lists < RETRAIN_PARTITION_SHARE * ivf_lists(rows)
