"""Opening a table of a LanceDB database that other writers may be creating at the same moment.

Two jobs starting on one database both find a companion table (errors, detections, labels) or the tile table
missing and both create it: one wins, the other's create fails. And on S3 a table's folder is listed before
its first version is written, so a writer that finds the name listed can still be told "not found" by
``open_table`` for a moment. :func:`open_or_create` treats both as "another writer is creating it" and opens
the table once its first version is there, for at most :data:`CREATED_ELSEWHERE_SECONDS`; a reader
(:func:`open_if_created`) takes such a table as not there yet: it has no rows to read.
"""

from __future__ import annotations

import time

# How long a table another writer is creating may be listed before its first version can be opened.
CREATED_ELSEWHERE_SECONDS = 60.0


def table_names(conn) -> list[str]:
    """Names of the tables in ``conn``."""
    result = conn.list_tables()
    return list(getattr(result, "tables", result))


def open_or_create(conn, name: str, schema):
    """``(table, created)``: table ``name`` of ``conn``, created empty with ``schema`` when missing (``created``
    True) or opened, waiting for a table that another writer is creating."""
    if name not in table_names(conn):
        try:
            return conn.create_table(name, schema=schema), True
        except (ValueError, OSError):  # another writer created it first (LanceDB's own errors)
            if name not in table_names(conn):
                raise
    return open_once_created(conn, name), False


def open_if_created(conn, name: str, names: list[str] | None = None):
    """Table ``name`` of ``conn``, or None when it is missing or listed without a first version yet (another
    writer is creating it): a reader does not wait for it. ``names``: the tables of ``conn`` when the caller has
    listed them already (a listing is a request to the store)."""
    if name not in (table_names(conn) if names is None else names):
        return None
    try:
        return conn.open_table(name)
    except ValueError as exc:
        if not _not_written_yet(exc):
            raise
        return None


def open_once_created(conn, name: str):
    """``conn.open_table(name)`` for a listed table: "not found" until its first version is written is "not
    yet", for at most :data:`CREATED_ELSEWHERE_SECONDS`."""
    deadline, pause = time.monotonic() + CREATED_ELSEWHERE_SECONDS, 0.05
    while True:
        try:
            return conn.open_table(name)
        except ValueError as exc:
            if not _not_written_yet(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 1.0)


def _not_written_yet(exc: ValueError) -> bool:
    """Whether LanceDB's ``exc`` from ``open_table`` of a listed table says it has no version yet."""
    return "not found" in str(exc)
