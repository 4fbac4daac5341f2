"""Rows of a table looked up by tile id: what labels, example searches, polygon filters and exports need
of the few tiles they name (the tile table's ``id`` carries a BTREE index, :mod:`rsclip.table.index`), their
footprints; and the companion tables kept beside a tile table (labels, detections), opened or created by name."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from rsclip.errors import NotFound
from rsclip.geo import footprints
from rsclip.table import datasets, opening, tiles

# Ids per lookup: one ``id IN (...)`` filter of at most this many literals.
LOOKUP_CHUNK = 1000
# What :func:`rsclip.table.tiles.tile_id` returns: 32 lower-case hex characters.
TILE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def is_tile_id(value) -> bool:
    """Whether ``value`` has the form of a tile id (32 lower-case hex characters)."""
    return isinstance(value, str) and TILE_ID_PATTERN.fullmatch(value) is not None


def has_column(table, name: str) -> bool:
    """Whether ``table`` (LanceDB table) has a column ``name`` (older tables lack newer optional columns)."""
    return name in table.schema.names


def rows_by_id(table, ids: Iterable[str], columns: Sequence[str], *, key: str = tiles.ID,
               where: str | None = None) -> pa.Table:
    """The ``columns`` of the rows of ``table`` whose ``key`` column is one of ``ids`` (and that pass the
    SQL ``where`` when given), in no set order.

    Columns the table lacks are left out; ``key`` is always included. Ids are looked up in chunks of
    :data:`LOOKUP_CHUNK`, so the filter stays small whatever the number of ids.
    """
    wanted = list(dict.fromkeys(str(i) for i in ids))
    present = [c for c in dict.fromkeys([key, *columns]) if has_column(table, c)]
    dataset = datasets.dataset_of(table)
    parts = []
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        chunk = wanted[start : start + LOOKUP_CHUNK]
        wanted_sql = f"{key} IN ({', '.join(tiles.sql_text(i) for i in chunk)})"
        parts.append(dataset.to_table(columns=present, filter=f"({wanted_sql}) AND ({where})" if where else wanted_sql))
    if not parts:
        return pa.table({c: pa.array([], dataset.schema.field(c).type) for c in present})
    return pa.concat_tables(parts)


def vectors_by_id(table, ids: Sequence[str]) -> np.ndarray:
    """The stored embeddings of tile ``ids`` in that order, ``(n, D)`` float32. Raises ``NotFound`` naming
    the ids that are not in the table."""
    found = rows_by_id(table, ids, [tiles.VECTOR])
    at = dict(zip(found.column(tiles.ID).to_pylist(), range(found.num_rows)))
    missing = [i for i in ids if i not in at]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise NotFound(f"{len(missing)} tile id(s) not in table {table.name!r}: {shown}")
    return vectors_of(found.column(tiles.VECTOR)).astype(np.float32)[[at[i] for i in ids]]


def vectors_of(column) -> np.ndarray:
    """A fixed-size-list column of vectors (an Arrow array or chunked array) as ``(rows, D)``."""
    found = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return found.flatten().to_numpy(zero_copy_only=False).reshape(len(found), found.type.list_size)


def open_companion(db, name: str, schema: pa.Schema, *, create: bool = False):
    """The table ``name`` of ``db``; created empty with ``schema`` when missing and ``create``, else None (also
    while another writer is creating it: :func:`~rsclip.table.opening.open_if_created`).
    Raises ``NotFound`` for a local folder ``db`` that does not exist, unless ``create``."""
    conn = tiles.connect(db, create=create)
    if create:
        return opening.open_or_create(conn, name, schema)[0]
    return opening.open_if_created(conn, name)


def tile_footprints(frame, table=None) -> np.ndarray:
    """The footprints (shapely geometries, None where unknown) of the tile rows of ``frame`` (a DataFrame
    with ``id`` and the bound columns), in its order.

    From the frame's own ``footprint`` column (WKB) when it has one, else looked up by id in ``table``
    when given and it has the column; a tile without a stored footprint gets the box of its bounds
    (:func:`rsclip.geo.footprints.box_footprint`), a tile without bounds None.
    """
    import shapely

    n = len(frame)
    wkb = np.full(n, None, dtype=object)
    if tiles.FOOTPRINT in frame.columns:
        wkb[:] = frame[tiles.FOOTPRINT].to_numpy(dtype=object)
    elif table is not None and n and has_column(table, tiles.FOOTPRINT):
        found = rows_by_id(table, frame[tiles.ID], [tiles.FOOTPRINT])
        by_id = dict(zip(found.column(tiles.ID).to_pylist(), found.column(tiles.FOOTPRINT).to_pylist()))
        wkb[:] = [by_id.get(i) for i in frame[tiles.ID]]
    out = np.full(n, None, dtype=object)
    stored = np.array([bool(v) for v in wkb], dtype=bool)
    if stored.any():
        out[stored] = shapely.from_wkb(list(wkb[stored]))
    bounds = [frame[c].to_numpy(dtype=np.float64, na_value=np.nan) if c in frame.columns else np.full(n, np.nan)
              for c in tiles.BOUNDS_COLUMNS]
    for i in np.flatnonzero(~stored):
        out[i] = footprints.box_footprint(*(float(b[i]) for b in bounds))
    return out
