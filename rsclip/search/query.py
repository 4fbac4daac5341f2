"""``rsclip.query``: ranked tiles for a text, an image, a vector or a stored tile, under shared filters.

The arguments become one validated :class:`~rsclip.search.request.Request` (``k``, the filters, the open
table), the query one unit vector (:func:`~rsclip.search.encoding.query_vector`), and a
:mod:`searcher <rsclip.search.searchers>` ranks the table. Examples (``positive``/``negative``) are ranked by
:mod:`rsclip.search.examples`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from rsclip.table import tiles
from rsclip.table.rows import TILE_ID_PATTERN
from rsclip.errors import InvalidInput, NotFound
from rsclip.search.encoding import (QueryLike, Text, checked_text, is_image_query, query_vector, read_query_image,
                                    self_ids)
from rsclip.search.examples import search_examples
from rsclip.search.filters import BBox
from rsclip.search.request import Request
from rsclip.search.searchers import SCORE, Found, find, searcher_for
from rsclip.search.slots import searching

# Image queries drop the row whose embedding equals the query's within this cosine distance (the query
# tile under another name) when none of the query's own tile ids is among the results.
SELF_MATCH_DISTANCE = 1e-5


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


@searching()
def query(db, query: QueryLike | None = None, k: int = 10, *, table: str = tiles.DEFAULT_TABLE,
          bbox: Sequence[float] | None = None, where: str | None = None, near: Sequence[float] | None = None,
          exclude_self: bool = True, resident: bool = False, allow_model_mismatch: bool = False, polygon=None,
          positive: Sequence | None = None, negative: Sequence | None = None, date=None,
          max_cloud: float | None = None, max_nodata: float | None = None) -> pd.DataFrame:
    """Rank the tiles of ``table`` in ``db`` against ``query``, or against ``positive``/``negative`` examples.

    The filters apply before the search, so ``k`` results come back when ``k`` exist; they combine.
    Tiles whose time or quality is unknown never pass ``date``, ``max_cloud`` or ``max_nodata``.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        query: A string (text search), an image (path, PIL image, HWC uint8 array) or a vector of the table's
            dimension. A text or image is encoded with the table's model. A string starting with ``s3://`` or
            ``file://`` or ending with an image suffix (``.jpg``, ``.tif``, ...) is an image path, a missing one
            ``NotFound`` (:func:`~rsclip.search.encoding.looks_like_image_path`); ``Text(s)`` is always text.
        k: How many tiles to return, in [1, 10000].
        table: The name of the tile table.
        bbox: ``(lon_min, lat_min, lon_max, lat_max)``: keeps tiles intersecting it.
        where: An extra SQL filter on the table's columns.
        near: ``(lon, lat, radius_km)``: keeps tiles whose bounds lie within ``radius_km`` great-circle
            kilometres of the point (0: tiles containing it); exact.
        exclude_self: Whether an image query leaves out the query tile itself (the row with the image's uri
            and whole-image window, or else the one row whose embedding equals the query's).
        resident: Answer from an in-memory copy of the table's current version (:class:`ResidentSearcher`, for
            long-lived searchers such as the web app: the first call loads the table, ~2.2 KB per 512-d row).
        allow_model_mismatch: Encode with the table's model even when it now resolves to other weights than
            the table records.
        polygon: GeoJSON, WKT or shapely (WGS84): keeps tiles whose footprint intersects it.
        positive: Examples to search for instead of ``query``: tile ids, images or texts
            (:func:`rsclip.search.examples.query_examples`); the examples are left out of the results.
        negative: Examples to search away from, with ``positive``.
        date: ``(start, end)`` (either None: open), ``"START/END"`` or one day/month/year: keeps tiles
            acquired then (an end given as a day includes it).
        max_cloud: Keeps tiles with at most this cloud cover (percent).
        max_nodata: Keeps tiles with at most this nodata share (fraction of the window).

    Returns:
        A DataFrame with columns id, uri, score (cosine similarity, descending), x, y, width, height, lon_min,
        lat_min, lon_max, lat_max, crs (and datetime, item_id, cloud_cover, nodata_fraction when the table has
        them).

    Raises:
        InvalidInput: For bad input (empty text, k outside [1, 10000], malformed bbox or near, wrong vector
            size, a table without model metadata, both a query and examples, an unreadable image).
        ModelMismatch: When the table's model now resolves to other weights than the table records, unless
            ``allow_model_mismatch``.
        NotFound: For an unknown table, no database at a local ``db``, or a missing image file.
    """
    examples = positive is not None or negative is not None
    if examples and query is not None:
        raise InvalidInput("give either a query or positive/negative examples, not both")
    request = Request.of(db, table, k, bbox=bbox, near=near, where=where, polygon=polygon, date=date,
                         max_cloud=max_cloud, max_nodata=max_nodata)
    if examples:
        return search_examples(request, positive, negative, resident=resident,
                               allow_model_mismatch=allow_model_mismatch).frame()
    return search_query(request, query, exclude_self=exclude_self, resident=resident,
                        allow_model_mismatch=allow_model_mismatch).frame()


def search_query(request: Request, query: QueryLike, *, exclude_self: bool = True, resident: bool = False,
                 allow_model_mismatch: bool = False) -> Found:
    """The ``request.k`` tiles nearest to ``query`` (text, image or vector) under the request's filters, as
    :func:`query` ranks them (its frame: ``.frame()``)."""
    if isinstance(query, str) or is_image_query(query):  # encoded with the model; a vector is not
        request.check_weights(allow_model_mismatch)
    if is_image_query(query) and isinstance(query, (str, os.PathLike)):
        image = read_query_image(query)
        vector = query_vector(image, request.model, request.dim)
        drop = self_match(self_ids(query, image)) if exclude_self else None
    else:
        vector = query_vector(query, request.model, request.dim)
        drop = self_match(set()) if exclude_self and is_image_query(query) else None
    extra = 0 if drop is None else 8  # the query's own tile under its few possible ids
    return find(searcher_for(request.table, resident=resident), vector, request.k, request.filters, drop=drop,
                extra=extra)


@searching()
def query_text(db, text: str, k: int = 10, *, table: str = tiles.DEFAULT_TABLE, bbox=None, where=None,
               near=None, resident: bool = False, allow_model_mismatch: bool = False,
               polygon=None, date=None, max_cloud=None, max_nodata=None) -> pd.DataFrame:
    """:func:`query` for a string that is always text, never a path or URI (what a web visitor types).

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        text: The text to search for: always text, never read as a path or URI.
        k: How many tiles to return, in [1, 10000].
        table: As for :func:`query`.
        bbox: As for :func:`query`.
        where: As for :func:`query`.
        near: As for :func:`query`.
        resident: As for :func:`query`.
        allow_model_mismatch: As for :func:`query`.
        polygon: As for :func:`query`.
        date: As for :func:`query`.
        max_cloud: As for :func:`query`.
        max_nodata: As for :func:`query`.

    Returns:
        The DataFrame of :func:`query`.

    Raises:
        InvalidInput: For blank text or bad input as for :func:`query`.
        LimitExceeded: For text longer than :data:`~rsclip.search.encoding.MAX_TEXT_CHARS` characters.
        ModelMismatch: As for :func:`query`.
        NotFound: For an unknown table.
    """
    return query(db, Text(checked_text(text)), k, table=table, bbox=bbox, where=where, near=near,
                 resident=resident, allow_model_mismatch=allow_model_mismatch, polygon=polygon, date=date,
                 max_cloud=max_cloud, max_nodata=max_nodata)


def tile_vector(table, tile_id: str) -> np.ndarray:
    """The stored embedding of tile ``tile_id``. Raises ``InvalidInput`` for a malformed id and
    ``NotFound`` for an id not in the table."""
    if not isinstance(tile_id, str) or not TILE_ID_PATTERN.fullmatch(tile_id):
        raise InvalidInput(f"not a tile id: {tile_id!r}")
    rows = table.search().where(f"{tiles.ID} = '{tile_id}'").select([tiles.VECTOR]).limit(1).to_arrow()
    if rows.num_rows == 0:
        raise NotFound(f"tile {tile_id} is no longer in the table")
    return np.asarray(rows.column(tiles.VECTOR)[0].as_py(), dtype=np.float32)


@searching()
def similar_tiles(db, tile_id: str, k: int, *, table: str = tiles.DEFAULT_TABLE, bbox: BBox | None = None,
                  resident: bool = False, allow_model_mismatch: bool = False, polygon=None, date=None,
                  max_cloud=None, max_nodata=None, near=None, where=None) -> pd.DataFrame:
    """The ``k`` tiles most similar to the stored tile ``tile_id`` (its own embedding), the tile left out.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        tile_id: The id of a tile of the table (32 hex characters).
        k: How many tiles to return, in [1, 10000].
        table: As for :func:`query`.
        bbox: As for :func:`query`.
        resident: As for :func:`query`.
        allow_model_mismatch: Accepted so that callers pass the same options to every query function; only
            stored vectors are compared, never the model, so it has nothing to allow here.
        polygon: As for :func:`query`.
        date: As for :func:`query`.
        max_cloud: As for :func:`query`.
        max_nodata: As for :func:`query`.
        near: As for :func:`query`.
        where: As for :func:`query`.

    Returns:
        The DataFrame of :func:`query`.

    Raises:
        InvalidInput: For a malformed tile id, ``k`` or filter.
        NotFound: For an unknown table, or a tile id not in the table.
    """
    request = Request.of(db, table, k, bbox=bbox, near=near, where=where, polygon=polygon, date=date,
                         max_cloud=max_cloud, max_nodata=max_nodata)
    return search_similar(request, tile_id, resident=resident).frame()


def search_similar(request: Request, tile_id: str, *, resident: bool = False) -> Found:
    """The ``request.k`` tiles most similar to the stored tile ``tile_id`` under the request's filters, the tile
    left out, as :func:`similar_tiles` ranks them (its frame: ``.frame()``)."""
    vector = tile_vector(request.table, tile_id)
    drop = lambda frame: (frame[tiles.ID] == tile_id).to_numpy()  # noqa: E731
    return find(searcher_for(request.table, resident=resident), vector, request.k, request.filters, drop=drop,
                extra=1)
