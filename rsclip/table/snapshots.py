"""Tables opened for reading, kept per process while no version is committed after them.

Opening a table costs ~0.8 ms (~3 ms at 1M rows: a larger manifest), and each question to an opened one (its
schema, its version) ~0.1 ms through LanceDB's event loop thread: most of a resident search once. A search
reads its table through :func:`read_table`, which hands out one :class:`Snapshot` per table and process and
opens the table again only once a version has been committed after it (BENCHMARKS.md "The table opened once
per process"). The snapshots live with the datasets (:mod:`rsclip.table.datasets`), which forgets both when
rsclip creates a table again.
"""

from __future__ import annotations

import os

from rsclip.table import datasets, tiles


class Snapshot:
    """A table opened at one version for reading: its name, uri, version and schema asked once, its writes
    refused (a writer opens its own: ``tiles.open_table``); the rest is the LanceDB table's (``search``,
    ``count_rows``, ``list_indices``...)."""

    WRITES = frozenset({"add", "merge_insert", "delete", "update", "restore", "checkout", "checkout_latest",
                        "create_index", "create_scalar_index", "create_fts_index", "optimize", "compact_files",
                        "cleanup_old_versions", "add_columns", "alter_columns", "drop_columns"})

    def __init__(self, table):
        self.table = table
        self.name, self.uri, self.version, self.schema = table.name, table.uri, table.version, table.schema
        self.dataset = datasets.dataset_of(self)  # its uri and version as just asked, not asked of LanceDB again

    def __getattr__(self, attr: str):
        table = self.__dict__.get("table")
        if table is None or attr in self.WRITES:
            raise AttributeError(f"{attr!r}: not on a table opened for reading (open it with tiles.open_table)")
        return getattr(table, attr)

    def is_latest(self) -> bool:
        """Whether no version was committed since (a listing of the table's versions: ~5 µs on a local disk,
        one LIST on object storage); False when that cannot be told (a table dropped, a store unreachable)."""
        try:
            return self.dataset.latest_version == self.version
        except Exception:  # noqa: BLE001 - opening anew reports it
            return False


def read_table(db, name: str) -> Snapshot:
    """The table ``name`` of ``db`` (a tile table or a companion: labels, detections) opened for reading (a
    :class:`Snapshot`), kept per process while no version is committed after it: a search sees each commit on
    its next call and pays for no reopening in between. Raises as ``tiles.open_table`` (which opens it; a
    connection ``db`` is opened every time)."""
    if not isinstance(db, (str, os.PathLike)):
        return Snapshot(tiles.open_table(db, name))
    key = (os.fspath(db), name)
    found = datasets.kept_snapshot(key)
    if found is not None and found.is_latest():
        return found
    return datasets.keep_snapshot(key, Snapshot(tiles.open_table(db, name)), replacing=found)
