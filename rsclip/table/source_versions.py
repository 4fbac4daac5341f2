"""A tile table's ``source_version`` upkeep: what a rerun of the embedding job does when objects changed.

Each tile records the version tag of its source object (``tiles.SOURCE_VERSION``: the ETag, or size and
mtime). When an object is rewritten in place its tiles keep their ids (``tiles.tile_id`` depends on uri and
window only, so labels that name a tile stay valid) but no longer match its version: a rerun embeds them
again and replaces the rows (``tiles.add_tiles``), then removes the object's tiles that were not replaced
(:func:`remove_tiles`: windows gone because the object got smaller, windows that no longer read). Tiles
stored without a version (tables of an older rsclip) are taken as current and given the version listed now
(:func:`record_versions`) without embedding them again; only when the object's tile grid changed are the
rest of them removed (:func:`remove_unversioned`).

The embedding job's read tasks find what to tidy up (:func:`stored_of`, by the uri index);
the removals go by id (the id index) except for the rare unversioned leftovers.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pyarrow as pa

from rsclip.table import datasets, keyed_writes, tiles

# Ids or uris named in one filter.
NAMES_PER_FILTER = 1000


def stored_of(table, uris: Iterable[str]) -> list[tuple[str, str, str | None]]:
    """``(id, uri, source_version)`` of every tile of ``table`` from the files ``uris`` (None: no version
    recorded); one filtered scan per :data:`NAMES_PER_FILTER` uris (the uri index answers it)."""
    wanted = list(dict.fromkeys(uris))
    has_version = tiles.SOURCE_VERSION in table.schema.names
    columns = [tiles.ID, tiles.URI, tiles.SOURCE_VERSION] if has_version else [tiles.ID, tiles.URI]
    found: list[tuple[str, str, str | None]] = []
    dataset = datasets.dataset_of(table)
    for i in range(0, len(wanted), NAMES_PER_FILTER):
        where = f"{tiles.URI} IN ({', '.join(tiles.sql_text(s) for s in wanted[i : i + NAMES_PER_FILTER])})"
        res = dataset.to_table(columns=columns, filter=where)
        versions = res.column(tiles.SOURCE_VERSION).to_pylist() if has_version else [None] * res.num_rows
        found.extend(zip(res.column(tiles.ID).to_pylist(), res.column(tiles.URI).to_pylist(), versions))
    return found


def record_versions(table, versions: Mapping[str, str]) -> int:
    """Set ``source_version`` of the tiles ``{id: version}`` (one commit, nothing else of the rows changes);
    returns how many rows were updated."""
    if not versions:
        return 0
    batch = pa.table({tiles.ID: list(versions), tiles.SOURCE_VERSION: list(versions.values())})
    result = keyed_writes.merge_on(table, tiles.ID, batch, insert=False)
    return int(getattr(result, "num_updated_rows", 0))


def _delete(table, column: str, names: list[str], extra: str = "") -> int:
    removed = 0
    for i in range(0, len(names), NAMES_PER_FILTER):
        where = f"{column} IN ({', '.join(tiles.sql_text(n) for n in names[i : i + NAMES_PER_FILTER])}){extra}"
        result = keyed_writes.retry_on_conflict(lambda: table.delete(where), table)
        removed += int(getattr(result, "num_deleted_rows", 0) or 0)
    return removed


def remove_tiles(table, ids: Iterable[str]) -> int:
    """Delete the tiles ``ids`` (stale tiles of rewritten objects); returns how many were removed."""
    return _delete(table, tiles.ID, list(dict.fromkeys(ids)))


def remove_unversioned(table, uris: Iterable[str]) -> int:
    """Delete the tiles of ``uris`` stored without a version (call it once the current ones have theirs
    recorded); returns how many were removed."""
    return _delete(table, tiles.URI, list(dict.fromkeys(uris)), f" AND {tiles.SOURCE_VERSION} IS NULL")
