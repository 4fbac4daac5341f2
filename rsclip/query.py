"""``rsclip.query``: ranked tiles for a text, an image or a vector, optionally inside a bounding box."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from rsclip import store
from rsclip.imageio import IMAGE_SUFFIXES, read_image
from rsclip.model import cached_model

MAX_K = 10_000
RESULT_COLUMNS = (store.ID, store.URI, "score", *store.WINDOW_COLUMNS, *store.BOUNDS_COLUMNS, store.CRS)
# ANN search settings used when the table has a vector index (ignored by an exact scan).
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 10

BBox = tuple[float, float, float, float]
QueryLike = Union[str, os.PathLike, Image.Image, np.ndarray, Sequence[float]]


def validate_bbox(bbox: Sequence[float]) -> BBox:
    """``bbox`` as ``(lon_min, lat_min, lon_max, lat_max)`` floats.

    Raises ``ValueError`` unless it has four finite numbers, longitudes in [-180, 180], latitudes in
    [-90, 90] and min <= max on both axes.
    """
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be four numbers (lon_min, lat_min, lon_max, lat_max), got {bbox!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbox must be four finite numbers (lon_min, lat_min, lon_max, lat_max), got {bbox!r}")
    lon_min, lat_min, lon_max, lat_max = values
    for lon in (lon_min, lon_max):
        if not -180.0 <= lon <= 180.0:
            raise ValueError(f"bbox longitude {lon} is outside [-180, 180]")
    for lat in (lat_min, lat_max):
        if not -90.0 <= lat <= 90.0:
            raise ValueError(f"bbox latitude {lat} is outside [-90, 90]")
    if lon_min > lon_max or lat_min > lat_max:
        raise ValueError(f"bbox is inverted: min must not exceed max, got {values}")
    return values


def bbox_filter(bbox: BBox) -> str:
    """SQL keeping tiles whose WGS84 bounds intersect ``bbox`` (touching counts; null bounds never match)."""
    lon_min, lat_min, lon_max, lat_max = bbox
    return (
        f"({store.LON_MIN} <= {lon_max!r} AND {store.LON_MAX} >= {lon_min!r} "
        f"AND {store.LAT_MIN} <= {lat_max!r} AND {store.LAT_MAX} >= {lat_min!r})"
    )


def _looks_like_image_path(text: str) -> bool:
    if text.startswith("s3://") or text.startswith("file://"):
        return True
    return text.lower().endswith(IMAGE_SUFFIXES) and Path(text).is_file()


def query_vector(query: QueryLike, model: str, dim: int) -> np.ndarray:
    """The unit ``(dim,)`` vector for a query: text, image (path, URI, PIL, HWC uint8 array) or vector.

    A ``str`` is text unless it is an ``s3://``/``file://`` URI or an existing image file. Raises
    ``ValueError`` for blank text, unreadable images and vectors of the wrong size.
    """
    if isinstance(query, str) and not _looks_like_image_path(query):
        if not query.strip():
            raise ValueError("text query is empty")
        return cached_model(model).encode_texts([query])[0]
    if isinstance(query, (str, os.PathLike)):
        return cached_model(model).encode_images([read_image(query)])[0]
    if isinstance(query, Image.Image):
        return cached_model(model).encode_images([query])[0]
    array = np.asarray(query)
    if array.ndim in (2, 3) and array.dtype == np.uint8:
        return cached_model(model).encode_images([array])[0]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"query must be text, an image or a {dim}-d vector; got an array of shape {array.shape}, "
            f"dtype {array.dtype}"
        )
    if array.shape[0] != dim:
        raise ValueError(f"query vector has {array.shape[0]} values, the table's embeddings have {dim}")
    vector = array.astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("query vector must be finite and non-zero")
    return vector / norm


def search_table(
    table,
    vector: np.ndarray,
    k: int,
    *,
    where: str | None = None,
    nprobes: int = DEFAULT_NPROBES,
    refine_factor: int | None = DEFAULT_REFINE_FACTOR,
) -> pd.DataFrame:
    """The ``k`` rows nearest to ``vector`` (cosine), filtered by ``where`` before the search."""
    search = (
        table.search(vector, vector_column_name=store.VECTOR)
        .distance_type(store.METRIC)
        .select([*(c for c in RESULT_COLUMNS if c != "score"), "_distance"])
        .limit(k)
        .nprobes(nprobes)
    )
    if refine_factor:
        search = search.refine_factor(refine_factor)
    if where:
        search = search.where(where, prefilter=True)
    frame = search.to_pandas()
    frame["score"] = 1.0 - frame.pop("_distance").astype(np.float64)
    frame = frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return frame[list(RESULT_COLUMNS)]


def query(
    db,
    query: QueryLike,
    k: int = 10,
    *,
    table: str = store.DEFAULT_TABLE,
    bbox: Sequence[float] | None = None,
    where: str | None = None,
) -> pd.DataFrame:
    """Rank the tiles of ``table`` in ``db`` against ``query``.

    ``db`` is a local path, an ``s3://`` URI or a LanceDB connection. ``query`` is a string (text search), an
    image (path, PIL image, HWC uint8 array) or a vector of the table's dimension. ``bbox`` =
    ``(lon_min, lat_min, lon_max, lat_max)`` keeps tiles intersecting it, applied before the search so ``k``
    results come back when ``k`` exist; ``where`` is an extra SQL filter on the table's columns.

    Returns a DataFrame with columns id, uri, score (cosine similarity, descending), x, y, width, height,
    lon_min, lat_min, lon_max, lat_max, crs. Raises ``ValueError`` for bad input (empty text, k outside
    [1, 10000], malformed bbox, unknown table, wrong vector size, a table without model metadata).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    filters = []
    if bbox is not None:
        filters.append(bbox_filter(validate_bbox(bbox)))
    if where is not None:
        if not isinstance(where, str) or not where.strip():
            raise ValueError("where must be a non-empty SQL expression")
        filters.append(f"({where})")
    tbl = store.open_table(db, table)
    model, dim = store.table_model(tbl)
    vector = query_vector(query, model, dim)
    if vector.shape[0] != dim:
        raise ValueError(f"model {model} gives {vector.shape[0]}-d embeddings, table {table!r} holds {dim}-d")
    return search_table(tbl, vector, int(k), where=" AND ".join(filters) or None)
