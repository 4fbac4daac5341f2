"""Labels: named sets of tiles marked positive or negative, the input of example searches and detection jobs.

One table ``<table>_labels`` beside each tile table (:func:`labels_table_name`), one row per (label, tile):

=============  ===========================  =====================================================
column         type                         meaning
=============  ===========================  =====================================================
``key``        string                       ``<label>:<tile id>``: the upsert key
``id``         string                       the tile's id (:func:`rsclip.table.tiles.tile_id`)
``label``      string                       the label set's name (:data:`LABEL_PATTERN`)
``value``      int8                         +1 positive, -1 negative
``time``       timestamp[us, UTC]           when the row was last written
``note``       string, nullable             free text
=============  ===========================  =====================================================

Labels reference tile ids, which are a pure function of (uri, window): re-embedding the archive (another
model, the same table name or a new one) keeps them valid. Writes are upserts on ``key`` (labelling a tile
again replaces its value: a tile is never both positive and negative in one set) and removals delete by
key, so repeating either changes nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Iterable

import pandas as pd
import pyarrow as pa

from rsclip.runtime import texts
from rsclip.table import datasets, keyed_writes, rows, tiles
from rsclip.errors import InvalidInput, LimitExceeded, NotFound

LABELS_SUFFIX = "_labels"
KEY, LABEL, VALUE, TIME, NOTE = "key", "label", "value", "time", "note"
POSITIVE, NEGATIVE = 1, -1
LABEL_COLUMNS = (tiles.ID, LABEL, VALUE, TIME, NOTE)
LABELS_SCHEMA = pa.schema([
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(tiles.ID, pa.string(), nullable=False),
    pa.field(LABEL, pa.string(), nullable=False),
    pa.field(VALUE, pa.int8(), nullable=False),
    pa.field(TIME, pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field(NOTE, pa.string()),
])
# Label names: letters, digits, space, dot, dash, underscore; safe in file names and SQL literals alike.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}")
MAX_IDS_PER_CALL = 100_000
MAX_NOTE_CHARS = 2_000


def labels_table_name(table: str) -> str:
    """The name of the labels table of tile table ``table``."""
    return f"{table}{LABELS_SUFFIX}"


def validate_label(label) -> str:
    """``label`` as a label-set name. Raises ``InvalidInput`` unless it matches :data:`LABEL_PATTERN`."""
    if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
        raise InvalidInput(f"label must be 1-64 letters, digits, spaces, '.', '-' or '_' (starting with a letter "
                           f"or digit), got {label!r}")
    return label


def _checked_ids(ids: Iterable[str], what: str) -> list[str]:
    values = [ids] if isinstance(ids, str) else list(ids)
    if len(values) > MAX_IDS_PER_CALL:
        raise LimitExceeded(f"{len(values):,} {what} tile ids in one call, more than {MAX_IDS_PER_CALL:,}")
    bad = [v for v in values if not rows.is_tile_id(v)]
    if bad:
        raise InvalidInput(f"not a tile id ({what}): {bad[0]!r}")
    return list(dict.fromkeys(values))


def open_labels(db, table: str = tiles.DEFAULT_TABLE, *, create: bool = False):
    """The labels table of tile table ``table`` in ``db``; created empty when ``create``, else None when
    there is none yet."""
    return rows.open_companion(db, labels_table_name(table), LABELS_SCHEMA, create=create)


def add_labels(db, label: str, positive: Iterable[str] = (), negative: Iterable[str] = (), *,
               table: str = tiles.DEFAULT_TABLE, note: str | None = None) -> int:
    """Label tiles of ``table`` positive or negative in the set ``label`` (upsert).

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        label: the label set.
        positive: ids of the tiles that show it.
        negative: ids of the tiles that do not.
        table: the tile table the ids belong to.
        note: a note kept with each label written.

    Returns:
        The rows written.

    Raises:
        InvalidInput: a bad label name or tile id, a tile given as both positive and negative, no tile ids, a
            note over :data:`MAX_NOTE_CHARS` or holding a lone surrogate.
        LimitExceeded: more than :data:`MAX_IDS_PER_CALL` positive or negative ids.
        NotFound: the tile table does not exist, or tile ids are not in it.
    """
    label = validate_label(label)
    pos, neg = _checked_ids(positive, "positive"), _checked_ids(negative, "negative")
    both = set(pos) & set(neg)
    if both:
        raise InvalidInput(f"tile {sorted(both)[0]} is given as both positive and negative")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        raise InvalidInput(f"note must be text of at most {MAX_NOTE_CHARS} characters")
    if note is not None:
        texts.check_characters(note, "note")
    ids = pos + neg
    if not ids:
        raise InvalidInput("no tile ids given: pass positive and/or negative tile ids")
    tile_table = tiles.open_table(db, table)
    found = set(rows.rows_by_id(tile_table, ids, []).column(tiles.ID).to_pylist())
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"{len(missing)} tile id(s) not in table {table!r}: {', '.join(missing[:5])}")
    now = dt.datetime.now(dt.timezone.utc)
    batch = pa.Table.from_pydict({
        KEY: [f"{label}:{i}" for i in ids], tiles.ID: ids, LABEL: [label] * len(ids),
        VALUE: [POSITIVE] * len(pos) + [NEGATIVE] * len(neg), TIME: [now] * len(ids), NOTE: [note] * len(ids),
    }, schema=LABELS_SCHEMA)
    target = open_labels(db, table, create=True)
    keyed_writes.merge_on(target, KEY, batch)
    return len(ids)


def remove_labels(db, label: str, ids: Iterable[str] | None = None, *, table: str = tiles.DEFAULT_TABLE) -> int:
    """Remove tiles from a label set.

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        label: the label set.
        ids: the tiles to remove; None: the whole set.
        table: the tile table the set labels.

    Returns:
        The rows removed (0 when they were not labelled).

    Raises:
        NotFound: an unknown label set.
        InvalidInput: a bad label name or tile id.
        LimitExceeded: more than :data:`MAX_IDS_PER_CALL` ids.
    """
    label = validate_label(label)
    target = _labels_of(db, table, label)
    where = f"{LABEL} = {tiles.sql_text(label)}"
    if ids is not None:
        wanted = _checked_ids(ids, "removed")
        if not wanted:
            return 0
        where += f" AND {KEY} IN ({', '.join(tiles.sql_text(f'{label}:{i}') for i in wanted)})"
    count = target.count_rows(where)
    if count:
        keyed_writes.retry_on_conflict(lambda: target.delete(where), target)
    return count


def _labels_of(db, table: str, label: str):
    """The labels table holding set ``label``; raises ``NotFound`` naming the sets there are."""
    target = open_labels(db, table)
    if target is None or target.count_rows(f"{LABEL} = {tiles.sql_text(label)}") == 0:
        known = sorted(label_sets(db, table=table)[LABEL]) if target is not None else []
        raise NotFound(f"no label set {label!r} for table {table!r} (label sets: {', '.join(known) or 'none'})")
    return target


def read_labels(db, label: str | None = None, *, table: str = tiles.DEFAULT_TABLE) -> pd.DataFrame:
    """The labels of one label set, or of all.

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        label: the label set; None: all sets.
        table: the tile table the sets label.

    Returns:
        A DataFrame with columns id, label, value, time, note, sorted by label then time.

    Raises:
        NotFound: an unknown label set.
        InvalidInput: a bad label name.
    """
    if label is None:
        target = open_labels(db, table)
        where = None
    else:
        target = _labels_of(db, table, validate_label(label))
        where = f"{LABEL} = {tiles.sql_text(label)}"
    if target is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LABEL_COLUMNS})
    frame = datasets.dataset_of(target).to_table(columns=list(LABEL_COLUMNS), filter=where).to_pandas()
    return frame.sort_values([LABEL, TIME, tiles.ID], kind="stable").reset_index(drop=True)


def labels_with_uris(db, label: str, *, table: str = tiles.DEFAULT_TABLE) -> pd.DataFrame:
    """:func:`read_labels` of ``label`` with the ``uri`` of each tile after its id (null for a tile no longer in
    the table): an id alone does not say which image a label is about."""
    frame = read_labels(db, label, table=table)
    found = rows.rows_by_id(tiles.open_table(db, table), frame[tiles.ID], [tiles.URI])
    uris = dict(zip(found.column(tiles.ID).to_pylist(), found.column(tiles.URI).to_pylist()))
    frame.insert(frame.columns.get_loc(tiles.ID) + 1, tiles.URI, [uris.get(i) for i in frame[tiles.ID]])
    return frame


def label_sets(db, *, table: str = tiles.DEFAULT_TABLE) -> pd.DataFrame:
    """The label sets of a tile table.

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        table: the tile table the sets label.

    Returns:
        A DataFrame with one row per label set: label, positives, negatives, updated (the latest write).
    """
    target = open_labels(db, table)
    columns = [LABEL, "positives", "negatives", "updated"]
    if target is None:
        return pd.DataFrame({c: [] for c in columns})
    frame = datasets.dataset_of(target).to_table(columns=[LABEL, VALUE, TIME]).to_pandas()
    if frame.empty:
        return pd.DataFrame({c: [] for c in columns})
    grouped = frame.groupby(LABEL, sort=True)
    return pd.DataFrame({
        LABEL: list(grouped.groups),
        "positives": grouped[VALUE].apply(lambda v: int((v == POSITIVE).sum())).to_numpy(),
        "negatives": grouped[VALUE].apply(lambda v: int((v == NEGATIVE).sum())).to_numpy(),
        "updated": grouped[TIME].max().to_numpy(),
    })


def split_labels(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(positive ids, negative ids)`` of a :func:`read_labels` frame."""
    values = frame[VALUE].to_numpy()
    ids = frame[tiles.ID].to_numpy(dtype=object)
    return [str(i) for i in ids[values == POSITIVE]], [str(i) for i in ids[values == NEGATIVE]]


__all__ = ["add_labels", "label_sets", "labels_table_name", "read_labels", "remove_labels", "split_labels"]
