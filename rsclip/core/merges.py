"""Keyed writes to Lance tables: one atomic merge per batch, retried when a concurrent writer commits first,
and the key column indexed so that merges stay flat in memory as tables grow.

Every rsclip write of keyed rows (tiles, detections, labels, error rows, progress, source versions) goes
through :func:`merge_on`; other commits that may meet a concurrent writer (deletes, index builds) through
:func:`retry_on_conflict`.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

import pyarrow as pa

WRITE_RETRIES = 10
T = TypeVar("T")
_indexed_keys: set[tuple[str, str]] = set()  # (table location, key) known to have the index


def merge_on(table, key: str, batch: pa.Table, *, update_where: str | None = None, insert: bool = True):
    """Merge ``batch`` into ``table`` on the column ``key`` as one atomic commit, retried on a conflict with a
    concurrent writer: matched rows are replaced (only where ``update_where`` holds, when given), the others
    inserted (unless ``insert`` is False). Returns Lance's merge result.

    The key column gets its BTREE index as soon as the table has rows: with it, the merge looks up the batch's
    keys; without it, Lance holds every key of the table in memory, so a writer's memory would grow with the
    table (BENCHMARKS.md, "Detection").
    """
    def write():
        merge = table.merge_insert(key)
        merge = merge.when_matched_update_all(where=update_where) if update_where else merge.when_matched_update_all()
        return (merge.when_not_matched_insert_all() if insert else merge).execute(batch)

    result = retry_on_conflict(write, table)
    ensure_key_index(table, key)
    return result


def ensure_key_index(table, key: str) -> None:
    """A BTREE index named ``<key>_idx`` on ``key`` once ``table`` has rows (see :func:`merge_on`); rows
    written after it are folded in by ``rsclip index`` / ``optimize``, and the merge scans only those.
    Once seen, an index is remembered for the process: the writer's later commits do not list indexes again
    (one metadata read per commit on S3)."""
    from lancedb.index import BTree

    seen = (table.uri, key)
    if seen in _indexed_keys:
        return
    if not any(key in cfg.columns for cfg in table.list_indices()):
        if table.count_rows() == 0:
            return
        # replace=True: a concurrent writer creating the same index is not an error
        retry_on_conflict(lambda: table.create_index(key, config=BTree(), replace=True, name=f"{key}_idx"), table)
    _indexed_keys.add(seen)


def retry_on_conflict(write: Callable[[], T], table=None) -> T:
    """``write()``, retried with backoff when Lance reports a commit conflict with a concurrent writer.

    ``table`` (when given) is moved to its latest version before each retry.
    """
    for attempt in range(WRITE_RETRIES):
        try:
            return write()
        except Exception as exc:  # lance reports commit conflicts as generic errors
            text = str(exc).lower()
            if ("conflict" not in text and "retry" not in text) or attempt == WRITE_RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt * (1.0 + random.random()))
            if table is not None:
                table.checkout_latest()
    raise AssertionError("unreachable")
