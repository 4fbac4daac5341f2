"""A tile table's ``source_version`` upkeep: what a rerun of the embedding job does when objects changed.

Each tile records the version tag of its source object (``tiles.SOURCE_VERSION``: the ETag, or size and
mtime). When an object is rewritten in place its tiles keep their ids (``tiles.tile_id`` depends on uri and
window only, so labels that name a tile stay valid) but no longer match its version: a rerun embeds them
again and replaces the rows (``tiles.add_tiles``), then removes the object's tiles that were not replaced
(:func:`remove_tiles`: windows gone because the object got smaller, windows that no longer read). Tiles
stored without a version (tables of an older rsclip) are taken as current and given the version listed now
(:func:`record_versions`) without embedding them again; only when the object's tile grid changed are the
rest of them removed (:func:`remove_unversioned`).

:func:`stored_versions` finds what to tidy up with one streaming scan of two columns when a run starts; the
removals go by id (the id index) except for the rare unversioned leftovers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import pyarrow as pa

from rsclip.table import datasets, keyed_writes, tiles

# Rows per batch of the start-of-run scan, and ids or uris named in one filter.
SCAN_BATCH_ROWS = 65_536
NAMES_PER_FILTER = 1000


@dataclass
class StoredVersions:
    """What a tile table held of the listed files when a run started, for the files it must tidy up:
    ``other``: ``{uri: ids of tiles stored from another version}`` (objects rewritten since: few);
    ``unversioned``: ``{uri: number of tiles stored without a version}`` (tables of an older rsclip)."""

    other: dict[str, list[str]] = field(default_factory=dict)
    unversioned: Counter = field(default_factory=Counter)

    @property
    def uris(self) -> set[str]:
        """Every file to tidy up once its tiles are written."""
        return set(self.other) | set(self.unversioned)


def stored_versions(table, listed: Mapping[str, str]) -> StoredVersions:
    """The :class:`StoredVersions` of ``table`` for the files ``listed`` (``{uri: version}``): one streaming
    scan of the id, uri and version columns."""
    found = StoredVersions()
    if not listed:
        return found
    versioned = tiles.SOURCE_VERSION in table.schema.names
    columns = [tiles.ID, tiles.URI, tiles.SOURCE_VERSION] if versioned else [tiles.ID, tiles.URI]
    for batch in datasets.dataset_of(table).to_batches(columns=columns, batch_size=SCAN_BATCH_ROWS):
        ids, uris = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        versions = batch.column(2).to_pylist() if versioned else [None] * len(ids)
        for tile, uri, version in zip(ids, uris, versions):
            if uri not in listed or version == listed[uri]:
                continue
            if version is None:
                found.unversioned[uri] += 1
            else:
                found.other.setdefault(uri, []).append(tile)
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
