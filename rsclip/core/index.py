"""Index upkeep for a tile table: the IVF_PQ vector index and BTREE scalar indexes on id, uri, bounds, datetime.

Build once after a large write, refresh after appends. LanceDB answers a query from the index for the rows
it covers and by an exact flat scan for rows appended since, so new tiles are searchable immediately; a
refresh (``optimize``) folds them into the index so the scan stays short. The vector index is built with
``tiles.METRIC``, the one distance type every search asks for.

Sizing (see ``ivf_pq_params``): about ``sqrt(rows)`` IVF lists (k-means cost and the per-query list scan
balance there), and 8 dimensions per PQ sub-vector (64 bytes per 512-d vector). Searches read
``query.DEFAULT_NPROBES`` lists and re-rank ``DEFAULT_REFINE_FACTOR * k`` candidates with the exact vectors,
which is what makes recall@10 reach 0.95 on the benchmark (``bench/query.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lancedb.index import BTree, IvfPq

from rsclip.core import merges, tiles
from rsclip.errors import InvalidInput

VECTOR_INDEX = f"{tiles.VECTOR}_idx"
SCALAR_COLUMNS = (tiles.ID, tiles.URI, *tiles.BOUNDS_COLUMNS, tiles.DATETIME)
# Below this many rows an exact scan is fast (a few ms) and exact, and PQ training has too few samples
# (256 centroids per sub-vector); the vector index is not built.
MIN_ANN_ROWS = 10_000
MAX_PARTITIONS = 4096
DIMS_PER_SUBVECTOR = 8
# Rebuild (retrain) the vector index when rows not covered by its training exceed this share of the table:
# lists trained for the old row count grow long and the centroids stop describing the data.
RETRAIN_UNINDEXED_SHARE = 0.5


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


def ivf_pq_params(rows: int, dim: int) -> tuple[int, int]:
    """``(num_partitions, num_sub_vectors)`` for an IVF_PQ index over ``rows`` vectors of size ``dim``.

    Partitions: ``round(sqrt(rows))`` clamped to [1, 4096]. Sub-vectors: the largest divisor of ``dim`` not
    above ``dim / 8`` (at least 1), so each PQ code covers about 8 dimensions.
    """
    if rows < 1 or dim < 1:
        raise InvalidInput(f"need rows >= 1 and dim >= 1, got rows={rows}, dim={dim}")
    partitions = max(1, min(MAX_PARTITIONS, round(math.sqrt(rows))))
    target = max(1, dim // DIMS_PER_SUBVECTOR)
    sub_vectors = max(d for d in range(1, target + 1) if dim % d == 0)
    return partitions, sub_vectors


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
    partitions = None
    if hasattr(vector_cfg, "index_details"):
        partitions = (vector_cfg.index_details or {}).get("num_partitions")
    return IndexState(
        rows=rows,
        vector_index=f"{vector_cfg.name} ({stats.index_type}, {stats.distance_type})",
        indexed_rows=int(stats.num_indexed_rows),
        unindexed_rows=int(stats.num_unindexed_rows),
        scalar_indexes=tuple(sorted(scalar)),
        num_partitions=partitions,
        num_sub_vectors=compression.get("num_sub_vectors"),
        action=action,
        details=dict(vector_cfg.index_details or {}),
    )


def build_index(
    db,
    table: str = tiles.DEFAULT_TABLE,
    *,
    rebuild: bool = False,
    min_rows: int = MIN_ANN_ROWS,
) -> IndexState:
    """Build or refresh the indexes of tile table ``table`` in ``db`` (path, ``s3://`` URI or connection).

    - No vector index and at least ``min_rows`` rows: train IVF_PQ (``tiles.METRIC``, sizes from
      :func:`ivf_pq_params`).
    - A vector index exists: fold appended rows into it (``optimize``: compaction plus incremental index
      update), or retrain it when ``rebuild`` is set or the unindexed rows exceed half of the table.
    - BTREE indexes on ``id``, ``uri``, the four bound columns and ``datetime`` are created when missing (and
      the table has the column) and refreshed with the rest.

    Returns the resulting :class:`IndexState` (``action`` says what was done). Raises ``NotFound`` for an
    unknown table and ``InvalidInput`` for a table without rsclip metadata.
    """
    if min_rows < 1:
        raise InvalidInput(f"min_rows must be >= 1, got {min_rows}")
    # two jobs finishing on one table index it at the same time: the loser re-reads the state and goes on
    return merges.retry_on_conflict(lambda: _build_index_once(db, table, rebuild=rebuild, min_rows=min_rows))


def _build_index_once(db, table: str, *, rebuild: bool, min_rows: int) -> IndexState:
    tbl = tiles.open_table(db, table)
    _, dim = tiles.table_model(tbl)
    rows = tbl.count_rows()
    if rows == 0:
        return index_state(tbl, action="empty table: nothing to index")
    actions: list[str] = []
    existing = {c for cfg in tbl.list_indices() for c in cfg.columns}
    vector_cfg = _vector_index_config(tbl)
    retrain = rebuild
    if vector_cfg is not None and not retrain:
        stats = tbl.index_stats(vector_cfg.name)
        retrain = stats.num_unindexed_rows > RETRAIN_UNINDEXED_SHARE * rows
    if vector_cfg is not None and not retrain:
        tbl.optimize()
        actions.append("refreshed")
    if (vector_cfg is None or retrain) and rows >= min_rows:
        partitions, sub_vectors = ivf_pq_params(rows, dim)
        tbl.create_index(
            tiles.VECTOR,
            config=IvfPq(distance_type=tiles.METRIC, num_partitions=partitions, num_sub_vectors=sub_vectors),
            replace=True,
            name=VECTOR_INDEX,
        )
        actions.append(f"built IVF_PQ ({partitions} lists, {sub_vectors} sub-vectors)")
    elif vector_cfg is None:
        actions.append(f"no vector index: {rows} rows < {min_rows}, exact scan is used")
    for column in SCALAR_COLUMNS:
        if column not in existing and column in tbl.schema.names:  # older tables lack newer columns
            tbl.create_index(column, config=BTree(), replace=True, name=f"{column}_idx")
            actions.append(f"btree {column}")
    if "refreshed" not in actions and existing:
        tbl.optimize()  # bring existing scalar indexes up to date
        actions.append("refreshed")
    tbl.checkout_latest()
    return index_state(tbl, action="; ".join(actions))
