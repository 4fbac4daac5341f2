"""The tile table: one LanceDB table per archive, one row per embedded tile.

Schema (column names are the constants of :mod:`rsclip.table.names`, imported here):

=========================  =============================  ===============================================
column                     type                           meaning
=========================  =============================  ===============================================
``id``                     string                         :func:`tile_id` of (uri, window): deterministic
``uri``                    string                         source object (``s3://...`` or a local path)
``x, y, width, height``    int32                          pixel window in the source; whole image = 0,0,W,H
``lon_min, lat_min,``      float64, null when the source  WGS84 bounds of the window
``lon_max, lat_max``       has no georeference
``crs``                    string, nullable               native CRS of the source (e.g. ``EPSG:32618``)
``vector``                 fixed_size_list<float32>[D]    L2-normalised CLIP embedding
``source_version``         string, nullable               version tag of the source when embedded (ETag,
                                                          or size and mtime); null: not recorded (older
                                                          tables, tiles added without one)
``footprint``              binary (WKB), nullable         the window's true WGS84 outline
                                                          (:mod:`rsclip.geo.footprints`); null without
                                                          georeference; absent from older tables, whose
                                                          readers use the box of the bound columns
``datetime``               timestamp[us, UTC], nullable   when the source was acquired: the STAC item's
                                                          time, the GeoTIFF's acquisition tag or a date
                                                          in its name (:mod:`rsclip.geo.dates`); null:
                                                          unknown
``item_id``                string, nullable               the STAC item the tile comes from
``cloud_cover``            float64, nullable              the item's ``eo:cloud_cover`` (percent)
``nodata_fraction``        float64, nullable              share of the window's pixels that are nodata
                                                          (measured when read; 0 for chips)
=========================  =============================  ===============================================

The schema metadata records the model (hub id, path or ``s3://`` prefix), the embedding size and the exact
weights (:class:`~rsclip.model.sources.ModelIdentity`: absolute location and sha256 of the
safetensors), so a query encodes with the weights that embedded the tiles and refuses others. Writes go
through ``merge_insert`` on ``id``: each batch is one atomic commit; a row whose id is already present is
not added again, and is replaced only when the new row comes from another version of its source.
Tables written by an older rsclip are upgraded in place by :func:`create_table` (missing nullable columns
added with nulls, the weights recorded); reading them needs no upgrade (searches treat a missing time column
as all null: ``rsclip.search.filters.Filters.on``).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from rsclip.runtime import storage
from rsclip.table import datasets
from rsclip.table.opening import open_or_create, table_names
from rsclip.table.keyed_writes import merge_on, retry_on_conflict
from rsclip.table.names import (CLOUD_COVER, CRS, DATETIME, DEFAULT_TABLE, FOOTPRINT, HEIGHT, ID, ITEM_ID, LAT_MAX,
                                LAT_MIN, LON_MAX, LON_MIN, NODATA_FRACTION, SOURCE_VERSION, URI, VECTOR, WIDTH, X, Y)
from rsclip.model.sources import ModelIdentity
from rsclip.geo.windows import GRID_CRS, SCENES_TILED
from rsclip.errors import InvalidInput, ModelMismatch, NotFound

if TYPE_CHECKING:  # LanceDB is imported where a table is opened: decode workers never import it
    import lancedb

# The one distance type: the ANN index is built with it and every search asks for it. A mismatch makes
# LanceDB search the index with the wrong metric and silently return wrong neighbours.
METRIC = "cosine"

WINDOW_COLUMNS = (X, Y, WIDTH, HEIGHT)
BOUNDS_COLUMNS = (LON_MIN, LAT_MIN, LON_MAX, LAT_MAX)
TIME_COLUMNS = (DATETIME, ITEM_ID, CLOUD_COVER, NODATA_FRACTION)
# last, so that a table upgraded in place (the columns appended) has the same column order as a new one
COLUMNS = (ID, URI, *WINDOW_COLUMNS, *BOUNDS_COLUMNS, CRS, VECTOR, SOURCE_VERSION, FOOTPRINT, *TIME_COLUMNS)

# Companion tables of a tile table ``<table>``: write errors of the embedding job.
ERRORS_SUFFIX = "_errors"

META_MODEL = b"rsclip.model"
META_DIM = b"rsclip.dim"
META_MODEL_LOCATION = b"rsclip.model_location"  # absolute folder, s3:// prefix or hub-id@revision
META_WEIGHTS_SHA256 = b"rsclip.weights_sha256"
META_GRID = b"rsclip.grid"  # how its windows are anchored (rsclip.table.anchors); new tables: to the CRS
META_SCENES = b"rsclip.scenes"  # how its scenes are cut (rsclip.table.anchors); new tables: always into the grid

# merge_insert replaces a stored tile only for a row of another source version (the object was rewritten);
# a row without a version never replaces one (Lance's SQL has no IS DISTINCT FROM)
REPLACE_IF = (f"(target.{SOURCE_VERSION} IS NULL AND source.{SOURCE_VERSION} IS NOT NULL) "
              f"OR target.{SOURCE_VERSION} <> source.{SOURCE_VERSION}")


def tile_id(uri: str, x: int, y: int, width: int, height: int) -> str:
    """The id of the tile ``(x, y, width, height)`` of ``uri``: a pure function.

    Args:
        uri: the source object (``s3://...`` or a local path).
        x, y, width, height: the tile's pixel window in the source.

    Returns:
        32 hex characters.
    """
    key = f"{uri}\x00{int(x)}\x00{int(y)}\x00{int(width)}\x00{int(height)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def tile_schema(dim: int, model: str, identity: ModelIdentity | None = None) -> pa.Schema:
    """The Arrow schema of a tile table for ``dim``-sized embeddings of ``model`` (whose weights are
    ``identity``, recorded when given)."""
    if dim < 1:
        raise InvalidInput(f"embedding size must be positive, got {dim}")
    return pa.schema(
        [
            pa.field(ID, pa.string(), nullable=False),
            pa.field(URI, pa.string(), nullable=False),
            *(pa.field(c, pa.int32(), nullable=False) for c in WINDOW_COLUMNS),
            *(pa.field(c, pa.float64()) for c in BOUNDS_COLUMNS),
            pa.field(CRS, pa.string()),
            pa.field(VECTOR, pa.list_(pa.float32(), dim), nullable=False),
            pa.field(SOURCE_VERSION, pa.string()),
            pa.field(FOOTPRINT, pa.binary()),
            pa.field(DATETIME, pa.timestamp("us", tz="UTC")),
            pa.field(ITEM_ID, pa.string()),
            pa.field(CLOUD_COVER, pa.float64()),
            pa.field(NODATA_FRACTION, pa.float64()),
        ],
        metadata={META_MODEL: str(model).encode(), META_DIM: str(dim).encode(), META_GRID: GRID_CRS.encode(),
                  META_SCENES: SCENES_TILED.encode(),
                  **_weights_metadata(identity)},
    )


def _weights_metadata(identity: ModelIdentity | None) -> dict[bytes, bytes]:
    if identity is None:
        return {}
    return {META_MODEL_LOCATION: identity.location.encode(), META_WEIGHTS_SHA256: identity.weights_sha256.encode()}


def errors_table_name(table: str) -> str:
    """The name of the errors table that goes with tile table ``table`` (written by the embedding job)."""
    return f"{table}{ERRORS_SUFFIX}"


def connect(db: str | os.PathLike | lancedb.DBConnection, *, create: bool = True) -> lancedb.DBConnection:
    """A LanceDB connection for a local folder or an ``s3://`` URI (AWS variables honoured).

    Args:
        db: a local folder, an ``s3://`` URI, or a connection (returned as is).
        create: make a missing local folder (writers); readers pass False: ``NotFound`` "no database at db".

    Returns:
        The ``lancedb.DBConnection``.
    """
    import lancedb

    if isinstance(db, lancedb.DBConnection):
        return db
    text = str(db)
    if storage.is_remote(text):
        return lancedb.connect(text, storage_options=storage.lance_storage_options())
    folder = storage.local_path(text)
    if not create and not folder.is_dir():
        raise NotFound(f"no database at {text}")
    return lancedb.connect(str(folder))


def open_table(db, name: str = DEFAULT_TABLE):
    """Open the tile table ``name``.

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        name: the tile table.

    Returns:
        The LanceDB table.

    Raises:
        NotFound: the table does not exist, or no local folder ``db`` (which is never created here).
        StoreUnavailable: its store cannot be reached (``storage.failures``).
    """
    with storage.failures(db):
        conn = connect(db, create=False)
        names = table_names(conn)
        if name not in names:
            raise NotFound(f"unknown table {name!r} in {db!s} (tables: {', '.join(names) or 'none'})")
        return conn.open_table(name)


def has_vector_index(table) -> bool:
    """Whether ``table`` has an ANN index on its vector column."""
    return any(list(cfg.columns) == [VECTOR] for cfg in table.list_indices())


def table_model(table) -> tuple[str, int]:
    """``(model, dim)`` recorded in the table. Raises ``InvalidInput`` for a table without rsclip metadata."""
    meta = table.schema.metadata or {}
    if META_MODEL not in meta or META_DIM not in meta:
        raise InvalidInput(f"table {table.name!r} has no model metadata: it was not written by rsclip")
    return meta[META_MODEL].decode(), int(meta[META_DIM])


def table_weights(table) -> ModelIdentity | None:
    """The weights recorded in the table's metadata; None for a table written before rsclip recorded them."""
    meta = table.schema.metadata or {}
    if META_WEIGHTS_SHA256 not in meta:
        return None
    return ModelIdentity(meta.get(META_MODEL_LOCATION, b"").decode(), meta[META_WEIGHTS_SHA256].decode())


def weights_mismatch(table, model: str, identity: ModelIdentity) -> str | None:
    """A sentence saying how the weights ``model`` resolves to (``identity``) differ from those recorded in
    ``table``; None when they are the same or the table records none."""
    have = table_weights(table)
    if have is None or have.weights_sha256 == identity.weights_sha256:
        return None
    recorded = f"table {table.name!r} was embedded with the weights at {have.location}"
    old, new = have.weights_sha256[:16], identity.weights_sha256[:16]
    if have.location == identity.location:
        return f"{recorded} (sha256 {old}), which now hold other weights (sha256 {new}: re-exported in place?)"
    return f"{recorded} (sha256 {old}), but {model} now resolves to other weights at {identity.location} (sha256 {new})"


def create_table(db, name: str = DEFAULT_TABLE, *, model: str, dim: int, identity: ModelIdentity | None = None):
    """Open the tile table ``name`` for writing, creating it empty when missing; a table of an older rsclip
    is upgraded in place (:func:`upgrade_table`).

    Args:
        db: a local folder, an ``s3://`` URI or a LanceDB connection.
        name: the tile table.
        model: the model whose embeddings are added (hub id, path or ``s3://`` prefix), recorded in the table.
        dim: the embedding size, recorded in the table.
        identity: the weights about to be added.

    Returns:
        The LanceDB table.

    Raises:
        ModelMismatch: the table exists with another embedding size, or records other weights than ``identity``
            (another model, or the same folder re-exported), or (recording none) another model name: vectors of
            two models in one table cannot be compared. The same weights under another name are accepted.
    """
    table, created = open_or_create(connect(db), name, tile_schema(dim, model, identity))
    if created:
        datasets.forget_datasets(table.uri)  # a table of this name dropped before: its versions are gone
        return table
    have_model, have_dim = table_model(table)
    # a model is its weights, not their spelling: the same folder named otherwise (a link, a trailing slash,
    # relative) records the same digest; a table recording no weights can only compare the names
    recorded = table_weights(table)
    same_weights = None not in (recorded, identity) and recorded.weights_sha256 == identity.weights_sha256
    if have_dim != dim or (have_model != str(model) and not same_weights):
        raise ModelMismatch(
            f"table {name!r} holds embeddings of model {have_model!r} ({have_dim}-d); "
            f"refusing to add embeddings of {model!s} ({dim}-d). Use another table or the same model."
        )
    mismatch = identity and weights_mismatch(table, str(model), identity)
    if mismatch:
        raise ModelMismatch(f"{mismatch}: refusing to add embeddings of other weights to it. Use another "
                            "table, or restore the weights that embedded it.")
    upgrade_table(table, identity)
    return table


def upgrade_table(table, identity: ModelIdentity | None = None) -> None:
    """Upgrade a tile table written by an older rsclip in place, keeping every row and vector.

    The nullable columns it lacks are added, all null (``source_version``: not recorded, nothing is
    re-embedded for it; ``footprint``: none stored; the :data:`TIME_COLUMNS`: unknown). A table up to date is
    not touched (no new version).

    Args:
        table: the LanceDB tile table.
        identity: recorded as the table's weights when it records none.
    """
    def missing() -> list[pa.Field]:
        current = tile_schema(table_model(table)[1], "-")
        return [f for f in current if f.nullable and f.name not in table.schema.names]

    def upgrade():
        if missing():
            table.add_columns(missing())
        if identity is not None and table_weights(table) is None:
            table.to_lance().update_schema_metadata(
                {k.decode(): v.decode() for k, v in _weights_metadata(identity).items()})
            table.checkout_latest()

    if missing() or (identity is not None and table_weights(table) is None):
        retry_on_conflict(upgrade, table)


def tiles_to_arrow(rows: Mapping[str, Sequence] | pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns (dict of sequences or an Arrow table) as an Arrow table of the tile ``schema``.

    ``id`` is filled from uri and window when absent. Raises ``InvalidInput`` for missing columns, vectors of
    the wrong size, and vectors that are not finite (as ``InvalidInput``).
    """
    data = dict(rows) if not isinstance(rows, pa.Table) else {c: rows.column(c) for c in rows.column_names}
    missing = [c for c in (URI, *WINDOW_COLUMNS, VECTOR) if c not in data]
    if missing:
        raise InvalidInput(f"tile rows lack columns: {', '.join(missing)}")
    dim = schema.field(VECTOR).type.list_size
    vectors = data[VECTOR]
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    if isinstance(vectors, pa.FixedSizeListArray):
        vectors = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
    elif isinstance(vectors, pa.Array):
        vectors = vectors.to_pylist()
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InvalidInput(f"vectors must have shape (N, {dim}), got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise InvalidInput("vectors contain NaN or infinity")
    if len(vectors) and np.abs(np.linalg.norm(vectors, axis=1) - 1.0).max() > 1e-3:
        raise InvalidInput("vectors must be L2-normalised (unit length)")
    n = len(vectors)
    as_list = lambda col: col.to_pylist() if isinstance(col, (pa.Array, pa.ChunkedArray)) else list(col)
    if ID not in data:
        data[ID] = [
            tile_id(u, x, y, w, h)
            for u, x, y, w, h in zip(*(as_list(data[c]) for c in (URI, *WINDOW_COLUMNS)))
        ]
    arrays = {}
    for field in schema:
        if field.name == VECTOR:
            arrays[VECTOR] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        elif field.name in data:
            arrays[field.name] = pa.array(as_list(data[field.name]), type=field.type)
        elif field.nullable:
            arrays[field.name] = pa.nulls(n, type=field.type)
        else:
            raise InvalidInput(f"tile rows lack column {field.name!r}")
        if len(arrays[field.name]) != n:
            raise InvalidInput(f"column {field.name!r} has {len(arrays[field.name])} rows, vectors have {n}")
    return pa.Table.from_pydict(arrays, schema=schema)


def add_tiles(table, rows: Mapping[str, Sequence] | pa.Table) -> int:
    """Insert tiles whose id is not in the table yet, and replace those stored from another version of their
    source (``source_version``), as one atomic commit. Safe against concurrent writers to the same table.

    Args:
        table: the LanceDB tile table.
        rows: the tiles' columns (a dict of sequences or an Arrow table, as :func:`tiles_to_arrow` takes
            them). Duplicate ids inside ``rows`` are written once.

    Returns:
        How many rows were written.

    Raises:
        InvalidInput: missing columns, or vectors of the wrong size, not finite or not unit length.
    """
    batch = tiles_to_arrow(rows, table.schema)
    if batch.num_rows == 0:
        return 0
    ids = batch.column(ID).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    if len(first) != batch.num_rows:
        batch = batch.take(np.sort(first))
    result = merge_on(table, ID, batch, update_where=REPLACE_IF if SOURCE_VERSION in batch.column_names else None)
    return int(getattr(result, "num_inserted_rows", batch.num_rows)) + int(getattr(result, "num_updated_rows", 0))


def sql_text(value: str) -> str:
    """``value`` as a quoted SQL string literal for a LanceDB filter."""
    return "'" + str(value).replace("'", "''") + "'"


def existing_versions(table, ids: Iterable[str]) -> dict[str, str | None]:
    """``{id: source_version}`` for those of ``ids`` present in ``table`` (None: no version recorded)."""
    wanted = list(dict.fromkeys(ids))
    has_version = SOURCE_VERSION in table.schema.names
    columns = [ID, SOURCE_VERSION] if has_version else [ID]
    found: dict[str, str | None] = {}
    for i in range(0, len(wanted), 1000):
        chunk = wanted[i : i + 1000]
        where = f"{ID} IN ({', '.join(sql_text(s) for s in chunk)})"
        res = table.search().where(where).select(columns).limit(len(chunk)).to_arrow()
        versions = res.column(SOURCE_VERSION).to_pylist() if has_version else [None] * res.num_rows
        found.update(zip(res.column(ID).to_pylist(), versions))
    return found


def existing_ids(table, ids: Iterable[str]) -> set[str]:
    """The subset of ``ids`` already present in ``table``."""
    return set(existing_versions(table, ids))
