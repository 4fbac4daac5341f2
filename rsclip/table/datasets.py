"""The Lance datasets behind tables, opened once per process: a table's index cache lives in its dataset.

A search on a dataset opened afresh reloads the index pieces it touches; :func:`dataset_of` keeps the newest
few open per (location, version), and :func:`forget_datasets` drops those of a table created again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

# Lance datasets kept open per process (see dataset_of): one per (location, version), the newest few.
OPEN_DATASETS = 8

_datasets: "OrderedDict[tuple, object]" = OrderedDict()
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
        ds = _datasets.setdefault(key, ds)
        while len(_datasets) > OPEN_DATASETS:
            _datasets.popitem(last=False)
    return ds


def forget_datasets(uri: str) -> None:
    """Drop the datasets :func:`dataset_of` keeps for the table at ``uri``: a table dropped and created again
    starts its versions over, so (location, version) no longer names the same data. Called where rsclip
    creates a table; a process that outlives a table recreated elsewhere under the same name (a long-running
    ``rsclip serve``) must be restarted."""
    with _datasets_lock:
        for key in [k for k in _datasets if k[0] == uri]:
            del _datasets[key]
