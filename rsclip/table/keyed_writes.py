"""Keyed writes to Lance tables: one atomic merge per batch, retried when a concurrent writer commits first;
the key column declared the table's (unenforced) primary key, so that two writers inserting the same new keys
at once conflict instead of both inserting them (what Lance does not check is removed after the commit:
:func:`declare_key`), and indexed, so that merges stay flat in memory as tables grow.

Every rsclip write of keyed rows (tiles, detections, labels, error rows, progress, source versions) goes
through :func:`merge_on`; other commits that may meet a concurrent writer (deletes, index builds) through
:func:`retry_on_conflict`.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

import pyarrow as pa

from rsclip.errors import InvalidInput

WRITE_RETRIES = 10
T = TypeVar("T")
# Lance's field metadata naming a primary key column (LanceDB's set_unenforced_primary_key writes the second)
PRIMARY_KEY_MARK = b"lance-schema:unenforced-primary-key"
PRIMARY_KEY_POSITION = PRIMARY_KEY_MARK + b":position"
_indexed_keys: set[tuple[str, str]] = set()  # (table location, key) known to have the index
_declared_keys: set[tuple[str, str]] = set()  # (table location, key) known to be the primary key
log = logging.getLogger(__name__)


def merge_on(table, key: str, batch: pa.Table, *, update_where: str | None = None, insert: bool = True):
    """Merge ``batch`` into ``table`` on the column ``key`` as one atomic commit, retried on a conflict with a
    concurrent writer: matched rows are replaced (only where ``update_where`` holds, when given), the others
    inserted (unless ``insert`` is False). Returns Lance's merge result.

    The key column is declared the table's primary key before the first merge (:func:`declare_key`): without
    it, Lance lets two writers that insert the same new key at once both commit it (what it still lets
    through is removed after the commit). It gets its BTREE index as soon as the table has rows: with it, the
    merge looks up the batch's keys; without it, Lance holds every key of the table in memory, so a writer's
    memory would grow with the table (BENCHMARKS.md, "Detection").
    """
    declare_key(table, key)
    batch = _key_required(batch, key)
    planned: list[int] = []  # the version each attempt read

    def write():
        planned.append(table.version)
        merge = table.merge_insert(key)
        merge = merge.when_matched_update_all(where=update_where) if update_where else merge.when_matched_update_all()
        return (merge.when_not_matched_insert_all() if insert else merge).execute(batch)

    result = retry_on_conflict(write, table)
    ensure_key_index(table, key)
    if getattr(result, "num_inserted_rows", 0) and getattr(result, "version", planned[-1] + 1) != planned[-1] + 1:
        drop_duplicate_keys(table, key, batch.column(key))  # another writer committed in between
    return result


def declare_key(table, key: str) -> None:
    """Declare ``key`` the unenforced primary key of ``table`` unless it is already (once per process and
    table). Lance then records the keys a merge inserts and refuses, as a commit conflict that
    :func:`retry_on_conflict` retries against the new version, a merge inserting a key that a concurrent one
    committed first. A table whose key cannot be declared (a nullable key column, from before rsclip's schemas
    made keys required) is written as before, with a warning.

    What Lance leaves open: a merge that finds its matches through the key's index (every merge after a
    table's first, :func:`ensure_key_index`) does not record its inserted keys in pylance 14
    (lance-format/lance#9238), so a writer whose merge read a version from before another writer inserted
    the same new keys commits them again: always when its table handle is older than that commit, in 2 of
    about 25 runs of two writers merging 8 batches each at once on S3. That writer then finds another commit
    between the version it read and its own, and keeps one row per key (:func:`drop_duplicate_keys`); a
    reader in between can see both."""
    seen = (table.uri, key)
    if seen in _declared_keys:
        return
    if not _is_declared(table, key):
        try:
            table.set_unenforced_primary_key(key)
        except Exception as exc:  # declared meanwhile by another writer, or a column that cannot be a key
            table.checkout_latest()
            if not _is_declared(table, key):
                log.warning("%s: %s cannot be declared its primary key (%s); keys two writers insert at once "
                            "are only removed afterwards", table.name, key, str(exc).splitlines()[0][:200])
    _declared_keys.add(seen)


DELETE_IDS_PER_COMMIT = 10_000


def drop_duplicate_keys(table, key: str, keys=None, *, where: str | None = None) -> int:
    """Delete every row but the last written (highest row id) of each of ``keys`` (or of each key among the
    rows the SQL ``where`` selects) that ``table`` holds more than once; returns the rows deleted. :func:`merge_on` calls it when another writer committed between the
    version its merge read and its own commit, and the merge inserted rows: the case in which two writers can
    both insert a key (:func:`declare_key`). The last row is what the later merge would have written had it
    seen the first; writers cleaning up at once agree on it, so one row per key is left. The look-up costs
    ~0.4 s per 65k keys in a 1M-row table here, paid only by merges that another writer's commit interleaved."""
    import pyarrow.compute as pc

    table.checkout_latest()
    rows = where if where is not None else pc.field(key).isin(keys)
    found = table.to_lance().to_table(columns=[key], filter=rows, with_row_id=True)
    found = found.sort_by([(key, "ascending"), ("_rowid", "descending")])
    names, ids = found.column(key).to_pylist(), found.column("_rowid").to_pylist()
    extra = [ids[i] for i in range(1, len(ids)) if names[i] == names[i - 1]]
    for start in range(0, len(extra), DELETE_IDS_PER_COMMIT):
        where = f"_rowid IN ({', '.join(str(i) for i in extra[start : start + DELETE_IDS_PER_COMMIT])})"
        retry_on_conflict(lambda w=where: table.delete(w), table)
    if extra:
        log.warning("%s: removed %d earlier row(s) of %s values that another writer inserted meanwhile",
                    table.name, len(extra), key)
    return len(extra)


def _key_required(batch: pa.Table, key: str) -> pa.Table:
    """``batch`` with its key column marked not nullable, as a primary key must be (a batch built without a
    schema, e.g. ``pa.table({...})``, has nullable columns); a row without a key is an error."""
    index = batch.schema.get_field_index(key)
    field = batch.schema.field(index)
    if not field.nullable:
        return batch
    if batch.column(index).null_count:
        raise InvalidInput(f"{batch.column(index).null_count} row(s) to write have no {key}")
    return batch.cast(batch.schema.set(index, field.with_nullable(False)))


def _is_declared(table, key: str) -> bool:
    meta = table.schema.field(key).metadata or {}
    return PRIMARY_KEY_POSITION in meta or meta.get(PRIMARY_KEY_MARK, b"").lower() in (b"true", b"1", b"yes")


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
