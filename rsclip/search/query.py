"""``rsclip.query``: ranked tiles for a text, an image, a vector or a stored tile, under shared filters.

A query becomes one unit vector (:func:`query_vector`), filters become a validated
:class:`~rsclip.search.filters.Filters`, and a :mod:`searcher <rsclip.search.searchers>` ranks the table.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.geo.images import is_image_name, read_image
from rsclip.model.clip import cached_model
from rsclip.model.sources import model_identity
from rsclip.table.rows import TILE_ID_PATTERN
from rsclip.errors import InvalidInput, LimitExceeded, ModelMismatch, NotFound
from rsclip.search.filters import BBox, Filters
from rsclip.search.searchers import MAX_K, SCORE, search, searcher_for

# Image queries drop the row whose embedding equals the query's within this cosine distance (the query
# tile under another name) when none of the query's own tile ids is among the results.
SELF_MATCH_DISTANCE = 1e-5
# Longest text query encoded (a CLIP tokenizer keeps 77 tokens; longer text only costs tokenising time).
MAX_TEXT_CHARS = 2_000

QueryLike = Union[str, os.PathLike, Image.Image, np.ndarray, Sequence[float]]


class Text(str):
    """A string that is always a text query, never read as a path or URI: what a web visitor types.

    ``query(db, Text("file:///etc/passwd"))`` embeds those characters as text; a plain ``str`` naming an
    existing image file or an ``s3://``/``file://`` URI is read as an image (the Python API's path queries).
    """


def looks_like_image_path(text: str) -> bool:
    """True when a string query names an image: an ``s3://``/``file://`` URI, or an existing image file.
    Never for :class:`Text`."""
    if isinstance(text, Text):
        return False
    if text.startswith(("s3://", "file://")):
        return True
    return is_image_name(text) and Path(text).is_file()


def is_image_query(query) -> bool:
    """True when ``query`` is an image (path, URI, PIL image or HWC uint8 array) rather than text or a vector."""
    if isinstance(query, str):
        return looks_like_image_path(query)
    if isinstance(query, (os.PathLike, Image.Image)):
        return True
    return isinstance(query, np.ndarray) and query.ndim in (2, 3) and query.dtype == np.uint8


def checked_text(text: str, what: str = "text query") -> str:
    """``text`` once it may be encoded: a string, not blank, at most :data:`MAX_TEXT_CHARS` characters.
    Raises ``InvalidInput`` (``LimitExceeded`` for long text) naming ``what``."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{what} is empty (a non-empty text is needed)")
    if len(text) > MAX_TEXT_CHARS:
        raise LimitExceeded(f"{what} is {len(text):,} characters long, more than the limit of {MAX_TEXT_CHARS:,}")
    return str(text)


def text_vector(text: str, model: str) -> np.ndarray:
    """The unit vector of a text query. Raises ``InvalidInput`` for blank and ``LimitExceeded`` for long text."""
    return cached_model(model).encode_texts([checked_text(text)])[0]


def unit_vector(values, dim: int) -> np.ndarray:
    """A numeric ``(dim,)`` vector scaled to unit length. Raises ``InvalidInput`` for other shapes and zero."""
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.number):
        raise InvalidInput(f"query must be text, an image or a {dim}-d vector; got an array of shape {array.shape}, "
                           f"dtype {array.dtype}")
    if array.shape[0] != dim:
        raise InvalidInput(f"query vector has {array.shape[0]} values, the table's embeddings have {dim}")
    vector = array.astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidInput("query vector must be finite and non-zero")
    return vector / norm


def query_vector(query: QueryLike, model: str, dim: int) -> np.ndarray:
    """The unit ``(dim,)`` vector for a query: text, image (path, URI, PIL, HWC uint8 array) or vector.

    A ``str`` is text unless it is an ``s3://``/``file://`` URI or an existing image file. Raises
    ``InvalidInput`` for blank text, unreadable images and vectors of the wrong size.
    """
    if isinstance(query, str) and not looks_like_image_path(query):
        vector = text_vector(query, model)
    elif isinstance(query, (str, os.PathLike)):
        vector = cached_model(model).encode_images([read_image(query)])[0]
    elif is_image_query(query):
        vector = cached_model(model).encode_images([query])[0]
    else:
        return unit_vector(query, dim)
    return _checked_dim(vector, model, dim)


def self_ids(query: str | os.PathLike, image: np.ndarray) -> set[str]:
    """Ids the query image's own whole-image tile can have in a table: its uri as given, absolute, file://."""
    text = str(query)
    uris = {text}
    if not storage.is_remote(text):
        local = str(storage.local_path(text))
        uris |= {local, os.path.abspath(local), os.path.realpath(local), "file://" + os.path.abspath(local)}
    h, w = image.shape[:2]
    return {tiles.tile_id(u, 0, 0, w, h) for u in uris}


def self_match(ids: set[str]):
    """A ``drop`` function for :func:`~rsclip.search.searchers.search`: the rows with one of ``ids``, or when
    none of them is there, the single best row whose embedding equals the query's (the same tile stored
    under another name). Identical tiles elsewhere (all-nodata ocean) stay."""
    def drop(frame: pd.DataFrame) -> np.ndarray:
        mask = frame[tiles.ID].isin(ids).to_numpy().copy()
        if not mask.any() and len(frame) and frame[SCORE].iloc[0] >= 1.0 - SELF_MATCH_DISTANCE:
            mask[0] = True
        return mask
    return drop


def validate_k(k) -> int:
    """``k`` as an int in [1, MAX_K]. Raises ``InvalidInput`` otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    return int(k)


def query(db, query: QueryLike | None = None, k: int = 10, *, table: str = tiles.DEFAULT_TABLE,
          bbox: Sequence[float] | None = None, where: str | None = None, near: Sequence[float] | None = None,
          exclude_self: bool = True, resident: bool = False, allow_model_mismatch: bool = False, polygon=None,
          positive: Sequence | None = None, negative: Sequence | None = None, date=None,
          max_cloud: float | None = None, max_nodata: float | None = None) -> pd.DataFrame:
    """Rank the tiles of ``table`` in ``db`` against ``query``, or against ``positive``/``negative`` examples
    (tile ids, images or texts: :func:`rsclip.search.examples.query_examples`, the examples left out).

    ``db`` is a local path, an ``s3://`` URI or a LanceDB connection. ``query`` is a string (text search), an
    image (path, PIL image, HWC uint8 array) or a vector of the table's dimension. ``bbox`` =
    ``(lon_min, lat_min, lon_max, lat_max)`` keeps tiles intersecting it, applied before the search so ``k``
    results come back when ``k`` exist; ``where`` is an extra SQL filter on the table's columns.
    ``near`` = ``(lon, lat, radius_km)`` keeps tiles whose bounds lie within ``radius_km`` great-circle
    kilometres of the point (0: tiles containing it); exact, combinable with ``bbox`` and ``where``.
    ``polygon`` (GeoJSON, WKT or shapely, WGS84) keeps tiles whose footprint intersects it.
    ``date`` = ``(start, end)`` (either None: open), ``"START/END"`` or one day/month/year keeps tiles
    acquired then (an end given as a day includes it); ``max_cloud`` (percent) and ``max_nodata`` (fraction
    of the window) keep clear tiles; tiles whose time or quality is unknown never pass these.
    An image query leaves out the query tile itself (the row with the image's uri and whole-image window,
    or else the one row whose embedding equals the query's) unless ``exclude_self`` is False. ``resident``
    answers from an in-memory copy of the table's current version (:class:`ResidentSearcher`, for long-lived
    searchers such as the web app: the first call loads the table, ~2.2 KB per 512-d row).
    A text or image is encoded with the table's model; when that now resolves to other weights than the
    table records, :class:`~rsclip.errors.ModelMismatch` is raised unless ``allow_model_mismatch``.

    Returns a DataFrame with columns id, uri, score (cosine similarity, descending), x, y, width, height,
    lon_min, lat_min, lon_max, lat_max, crs (and datetime, item_id, cloud_cover, nodata_fraction when the
    table has them). Raises ``InvalidInput`` for bad input (empty text, k outside
    [1, 10000], malformed bbox or near, wrong vector size, a table without model metadata),
    ``ModelMismatch`` as said and ``NotFound`` for an unknown table.
    """
    if positive is not None or negative is not None:
        from rsclip.search.examples import query_examples  # built on this module
        if query is not None:
            raise InvalidInput("give either a query or positive/negative examples, not both")
        return query_examples(db, positive, negative, k, table=table, bbox=bbox, near=near, polygon=polygon,
                              where=where, resident=resident, allow_model_mismatch=allow_model_mismatch,
                              date=date, max_cloud=max_cloud, max_nodata=max_nodata)
    k = validate_k(k)
    filters = Filters.of(bbox=bbox, near=near, where=where, polygon=polygon, date=date, max_cloud=max_cloud,
                         max_nodata=max_nodata)
    tbl = tiles.open_table(db, table)
    model, dim = tiles.table_model(tbl)
    if isinstance(query, str) or is_image_query(query):  # encoded with the model; a vector is not
        check_model_weights(tbl, model, allow_model_mismatch)
    drop = None
    if is_image_query(query) and isinstance(query, (str, os.PathLike)):
        image = read_image(query)
        vector = query_vector(image, model, dim)
        drop = self_match(self_ids(query, image)) if exclude_self else None
    else:
        vector = query_vector(query, model, dim)
        drop = self_match(set()) if exclude_self and is_image_query(query) else None
    extra = 0 if drop is None else 8  # the query's own tile under its few possible ids
    return search(searcher_for(tbl, resident=resident), vector, k, filters, drop=drop, extra=extra)


def query_text(db, text: str, k: int = 10, *, table: str = tiles.DEFAULT_TABLE, bbox=None, where=None,
               near=None, resident: bool = False, allow_model_mismatch: bool = False,
               polygon=None, date=None, max_cloud=None, max_nodata=None) -> pd.DataFrame:
    """:func:`query` for a string that is always text, never a path or URI (what a web visitor types)."""
    return query(db, Text(checked_text(text)), k, table=table, bbox=bbox, where=where, near=near,
                 resident=resident, allow_model_mismatch=allow_model_mismatch, polygon=polygon, date=date,
                 max_cloud=max_cloud, max_nodata=max_nodata)


def check_model_weights(table, model: str, allow_mismatch: bool = False) -> None:
    """Raise :class:`~rsclip.errors.ModelMismatch` when ``model`` now resolves to other weights than those
    recorded in ``table`` (a folder re-exported in place, another hub revision), unless ``allow_mismatch``.
    A table that records no weights (written by an older rsclip) passes. The weights' hash is computed
    once per process and file state (:func:`~rsclip.model.sources.model_identity`)."""
    if allow_mismatch or tiles.table_weights(table) is None:
        return
    mismatch = tiles.weights_mismatch(table, model, model_identity(model))
    if mismatch:
        raise ModelMismatch(f"{mismatch}: a query encoded with them would not be comparable with the table. "
                            "Restore those weights or embed the table again; to search anyway, pass "
                            "allow_model_mismatch=True (rsclip query --allow-model-mismatch)")


def _checked_dim(vector: np.ndarray, model: str, dim: int) -> np.ndarray:
    if vector.shape[0] != dim:
        raise InvalidInput(f"model {model} gives {vector.shape[0]}-d embeddings, the table holds {dim}-d")
    return vector


def tile_vector(table, tile_id: str) -> np.ndarray:
    """The stored embedding of tile ``tile_id``. Raises ``InvalidInput`` for a malformed id and
    ``NotFound`` for an id not in the table."""
    if not isinstance(tile_id, str) or not TILE_ID_PATTERN.fullmatch(tile_id):
        raise InvalidInput(f"not a tile id: {tile_id!r}")
    rows = table.search().where(f"{tiles.ID} = '{tile_id}'").select([tiles.VECTOR]).limit(1).to_arrow()
    if rows.num_rows == 0:
        raise NotFound(f"tile {tile_id} is no longer in the table")
    return np.asarray(rows.column(tiles.VECTOR)[0].as_py(), dtype=np.float32)


def similar_tiles(db, tile_id: str, k: int, *, table: str = tiles.DEFAULT_TABLE, bbox: BBox | None = None,
                  resident: bool = False, allow_model_mismatch: bool = False, polygon=None, date=None,
                  max_cloud=None, max_nodata=None) -> pd.DataFrame:
    """The ``k`` tiles most similar to the stored tile ``tile_id`` (its own embedding), the tile left out.

    Only stored vectors are compared, never the model: ``allow_model_mismatch`` is accepted so that callers
    pass the same options to every query function, and has nothing to allow here."""
    k = validate_k(k)
    tbl = tiles.open_table(db, table)
    vector = tile_vector(tbl, tile_id)
    filters = Filters.of(bbox=bbox, polygon=polygon, date=date, max_cloud=max_cloud, max_nodata=max_nodata)
    drop = lambda frame: (frame[tiles.ID] == tile_id).to_numpy()  # noqa: E731
    return search(searcher_for(tbl, resident=resident), vector, k, filters, drop=drop, extra=1)
