"""The Lance datasets behind tables, and the tables opened for reading, kept open per process.

A search on a dataset opened afresh reloads the index pieces it touches; :func:`dataset_of` keeps the newest
few open per (location, version), and :func:`forget_datasets` drops those of a table created again, with the
snapshots :mod:`rsclip.table.snapshots` keeps here (:func:`kept_snapshot`, :func:`keep_snapshot`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

# Lance datasets kept open per process (see dataset_of): one per (location, version), the newest few.
OPEN_DATASETS = 8

_datasets: "OrderedDict[tuple, object]" = OrderedDict()
_snapshots: "OrderedDict[tuple[str, str], object]" = OrderedDict()  # (database, table) -> its Snapshot
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
    """Drop the datasets :func:`dataset_of` keeps, and the snapshots kept here, of the table at
    ``uri``: a table dropped and created again starts its versions over, so (location, version) no longer names
    the same data. Called where rsclip creates a table; a process that outlives a table recreated elsewhere
    under the same name (a long-running ``rsclip serve``) must be restarted."""
    with _datasets_lock:
        for key in [k for k in _datasets if k[0] == uri]:
            del _datasets[key]
        for key in [k for k, s in _snapshots.items() if s.uri == uri]:
            del _snapshots[key]


def kept_snapshot(key: tuple[str, str]):
    """The snapshot kept for ``key`` (database, table), or None."""
    with _datasets_lock:
        return _snapshots.get(key)


def keep_snapshot(key: tuple[str, str], snapshot, replacing=None):
    """Keep ``snapshot`` for ``key`` in place of ``replacing`` (the one found stale), unless another thread kept
    a newer one meanwhile (that one is returned); the oldest beyond :data:`OPEN_DATASETS` go."""
    with _datasets_lock:
        if replacing is not None and _snapshots.get(key) is replacing:
            del _snapshots[key]
        return _keep(_snapshots, key, snapshot)
