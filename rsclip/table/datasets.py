"""The Lance datasets behind tables, and tables opened for reading, kept once per process.

A search on a dataset opened afresh reloads the index pieces it touches; :func:`dataset_of` keeps the newest
few open per (location, version), and :func:`forget_datasets` drops those of a table created again.
Opening a table costs ~0.8 ms and each question to an opened one (its schema, its version) ~0.1 ms through
LanceDB's event loop: :func:`read_table` hands out one :class:`Snapshot` per table while it is the latest version.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

# Lance datasets kept open per process (see dataset_of): one per (location, version), the newest few.
OPEN_DATASETS = 8

_datasets: "OrderedDict[tuple, object]" = OrderedDict()
_snapshots: "OrderedDict[tuple[str, str], Snapshot]" = OrderedDict()
_datasets_lock = threading.Lock()


def dataset_of(table):
    """The Lance dataset behind ``table`` at its version, opened once per process.

    ``table.to_lance()`` opens a new dataset object each call, and the index cache lives in that object: a
    search on a fresh one reloads the index pieces it touches (~12 ms of a 1M-row query, BENCHMARKS.md).
    A version never changes once written, so the dataset is kept per (location, version, storage options);
    a table that has grown since is a new version and gets its own.
    """
    options = getattr(getattr(table, "_conn", None), "storage_options", None) or {}
    key = (table.uri, table.version, tuple(sorted(options.items())))
    with _datasets_lock:
        if key in _datasets:
            _datasets.move_to_end(key)
            return _datasets[key]
    ds = table.to_lance()
    with _datasets_lock:
        ds = _keep(_datasets, key, ds)
    return ds


def _keep(cache: OrderedDict, key, value):
    """``value`` kept under ``key`` (or the one another thread kept first), the oldest beyond the newest
    :data:`OPEN_DATASETS` dropped; the caller holds the lock."""
    value = cache.setdefault(key, value)
    cache.move_to_end(key)
    while len(cache) > OPEN_DATASETS:
        cache.popitem(last=False)
    return value


def forget_datasets(uri: str) -> None:
    """Drop the datasets :func:`dataset_of` keeps, and the snapshots :func:`read_table` keeps, of the table at
    ``uri``: a table dropped and created again starts its versions over, so (location, version) no longer names
    the same data. Called where rsclip creates a table; a process that outlives a table recreated elsewhere
    under the same name (a long-running ``rsclip serve``) must be restarted."""
    with _datasets_lock:
        for key in [k for k in _datasets if k[0] == uri]:
            del _datasets[key]
        for key in [k for k, s in _snapshots.items() if s.uri == uri]:
            del _snapshots[key]


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
        self.dataset = dataset_of(table)

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


def read_table(db, name: str):
    """The tile table ``name`` of ``db`` opened for reading (a :class:`Snapshot`), kept per process while no
    version is committed after it: a search sees each commit on its next call and pays for no reopening in
    between. Raises as ``tiles.open_table`` (which opens it; a connection ``db`` is opened every time)."""
    from rsclip.table import tiles

    if not isinstance(db, (str, os.PathLike)):
        return Snapshot(tiles.open_table(db, name))
    key = (os.fspath(db), name)
    with _datasets_lock:
        found = _snapshots.get(key)
    if found is not None and found.is_latest():
        return found
    opened = Snapshot(tiles.open_table(db, name))
    with _datasets_lock:
        if _snapshots.get(key) is found:  # not replaced by another thread meanwhile
            _snapshots.pop(key, None)
        return _keep(_snapshots, key, opened)
