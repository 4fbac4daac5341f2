"""``rsclip.query``: ranked tiles for a text, an image or a vector, optionally inside a bounding box."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from rsclip import geo, store
from rsclip.imageio import IMAGE_SUFFIXES, read_image
from rsclip.model import cached_model
from rsclip.resident import ROW_ID, resident_table

MAX_K = 10_000
RESULT_COLUMNS = (store.ID, store.URI, "score", *store.WINDOW_COLUMNS, *store.BOUNDS_COLUMNS, store.CRS)
_FETCH_COLUMNS = tuple(c for c in RESULT_COLUMNS if c != "score")
DISTANCE = "_distance"  # Lance's column of the search's distances, asked for by name (else it warns)
# ANN search settings used when the table has a vector index (ignored by an exact scan). Chosen on
# bench/query.py (see BENCHMARKS.md): recall@10 is limited by the PQ codes, not by nprobes, so re-ranking
# refine_factor * k candidates with the full vectors is what lifts it above 0.95.
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 40  # 20 gave recall@10 1.0 at 200k rows but 0.937 at 1M; 40 gives 0.99 at 1M
# A filtered search whose filter keeps at most this many rows scans them exactly instead of probing the
# index: exact and, at this size, as fast as the ANN path.
EXACT_FILTER_ROWS = 20_000
# A resident search (rsclip.resident) whose filters keep at most this many rows ranks them all in memory:
# at 1M rows that is at most one pass over the vectors (~110 ms), against ~300 ms for the prefiltered
# index (bench/query.py, BENCHMARKS.md).
RESIDENT_EXACT_ROWS = 1_000_000
# Image queries drop rows whose embedding equals the query's within this cosine distance (the query tile).
SELF_MATCH_DISTANCE = 1e-5

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
    exact: bool = False,
    resident: bool = False,
    bbox: BBox | None = None,
) -> pd.DataFrame:
    """The ``k`` rows nearest to ``vector`` (cosine), filtered by ``where`` and ``bbox`` (a validated
    ``(lon_min, lat_min, lon_max, lat_max)``, tiles intersecting it) before the search.

    ``exact`` bypasses the vector index (a flat scan). A filtered ANN search probes further lists when the
    first ``nprobes`` hold fewer than ``k`` matching rows. Rows appended since the index was built are
    scanned exactly beside it, so they are found before re-indexing.

    The search runs on the table's Lance dataset directly, and the frame is built from the Arrow columns:
    LanceDB's query builder and ``to_pandas`` cost more than the search itself on a 10-row answer (see
    BENCHMARKS.md, Query). ``resident`` answers from an in-memory copy of the table version
    (:mod:`rsclip.resident`, loaded on first use): the index is asked for candidate row ids only.
    """
    if resident:
        rows = resident_table(table, _FETCH_COLUMNS)
        return _search_resident(rows, vector, k, candidates=_resident_candidates(rows, where, bbox, exact),
                                where=where, bbox=bbox, nprobes=nprobes, refine_factor=refine_factor)
    where = _filter_sql(where, bbox)
    nearest = _nearest(vector, k, where=where, nprobes=nprobes, exact=exact)
    if refine_factor and not exact:
        nearest["refine_factor"] = refine_factor
    result = store.dataset_of(table).to_table(columns=[*_FETCH_COLUMNS, DISTANCE], nearest=nearest,
                                              filter=where or None, prefilter=bool(where))
    distance = result.column(DISTANCE).to_numpy(zero_copy_only=False).astype(np.float64)
    return _result_frame(result, 1.0 - distance)


def _nearest(vector: np.ndarray, k: int, *, where: str | None, nprobes: int, exact: bool) -> dict:
    """Lance's ``nearest`` argument for a search of ``k`` rows."""
    nearest: dict = {"column": store.VECTOR, "q": np.asarray(vector, dtype=np.float32), "k": int(k),
                     "metric": store.METRIC}
    if exact:
        nearest["use_index"] = False
    else:
        nearest["minimum_nprobes"] = nprobes
        if not where:
            nearest["maximum_nprobes"] = nprobes
    return nearest


def _filter_sql(where: str | None, bbox: BBox | None) -> str | None:
    """One SQL filter for ``where`` and ``bbox`` together (None when there is neither)."""
    present = [f for f in (bbox_filter(bbox) if bbox is not None else None, where) if f]
    return " AND ".join(f"({f})" for f in present) if len(present) > 1 else (present[0] if present else None)


def _resident_candidates(rows, where: str | None, bbox: BBox | None, exact: bool) -> np.ndarray | None:
    """Positions in ``rows`` (a resident table) to rank exactly in memory, or None: ask the index.

    The box is tested in memory and ``where`` by Lance; what they leave is ranked exactly when it is at most
    ``RESIDENT_EXACT_ROWS`` rows, when the table has no index, or with ``exact``.
    """
    candidates = None if bbox is None else np.flatnonzero(rows.intersecting(bbox))
    if where:
        matching = rows.positions(rows.dataset.to_table(columns=[], with_row_id=True, filter=where)
                                  .column(ROW_ID).to_numpy())
        candidates = matching if candidates is None else np.intersect1d(candidates, matching)
    if candidates is None and (exact or not rows.indexed):
        candidates = np.arange(len(rows))
    if candidates is not None and len(candidates) > RESIDENT_EXACT_ROWS and rows.indexed and not exact:
        return None
    return candidates


def _search_resident(rows, vector: np.ndarray, k: int, *, candidates: np.ndarray | None, where: str | None,
                     bbox: BBox | None, nprobes: int, refine_factor: int | None) -> pd.DataFrame:
    """:func:`search_table` on a resident table: ``candidates`` (:func:`_resident_candidates`) ranked by the
    resident vectors, or when None the ``refine_factor * k`` the index proposes (prefiltered)."""
    if candidates is None:
        both = _filter_sql(where, bbox)
        nearest = _nearest(vector, k * max(1, refine_factor or 1), where=both, nprobes=nprobes, exact=False)
        found = rows.dataset.to_table(columns=[DISTANCE], with_row_id=True, nearest=nearest, filter=both,
                                      prefilter=bool(both))
        candidates = rows.positions(found.column(ROW_ID).to_numpy())
    positions, scores = rows.top(candidates, vector, k)
    return _result_frame(rows.rows(positions), scores)


def _result_frame(columns, score: np.ndarray) -> pd.DataFrame:
    """RESULT_COLUMNS, best score first, from Arrow ``columns`` (the fetched columns) and their scores."""
    order = np.argsort(-score, kind="stable")
    frame = {c: columns.column(c).to_numpy(zero_copy_only=False)[order] for c in _FETCH_COLUMNS}
    frame["score"] = np.asarray(score, dtype=np.float64)[order]
    return pd.DataFrame({c: frame[c] for c in RESULT_COLUMNS})


def query(
    db,
    query: QueryLike,
    k: int = 10,
    *,
    table: str = store.DEFAULT_TABLE,
    bbox: Sequence[float] | None = None,
    where: str | None = None,
    near: Sequence[float] | None = None,
    exclude_self: bool = True,
    resident: bool = False,
) -> pd.DataFrame:
    """Rank the tiles of ``table`` in ``db`` against ``query``.

    ``db`` is a local path, an ``s3://`` URI or a LanceDB connection. ``query`` is a string (text search), an
    image (path, PIL image, HWC uint8 array) or a vector of the table's dimension. ``bbox`` =
    ``(lon_min, lat_min, lon_max, lat_max)`` keeps tiles intersecting it, applied before the search so ``k``
    results come back when ``k`` exist; ``where`` is an extra SQL filter on the table's columns.
    ``near`` = ``(lon, lat, radius_km)`` keeps tiles whose bounds lie within ``radius_km`` great-circle
    kilometres of the point (0: tiles containing it); exact, combinable with ``bbox`` and ``where``.
    An image query leaves out the query tile itself (the row with the image's uri and whole-image window,
    and rows whose embedding equals the query's) unless ``exclude_self`` is False. ``resident`` keeps the
    table's current version in this process's memory and answers from it (for long-lived searchers such as
    the web app: the first call loads the table, ~2.2 KB per 512-d row; see :mod:`rsclip.resident`).

    Returns a DataFrame with columns id, uri, score (cosine similarity, descending), x, y, width, height,
    lon_min, lat_min, lon_max, lat_max, crs. Raises ``ValueError`` for bad input (empty text, k outside
    [1, 10000], malformed bbox or near, unknown table, wrong vector size, a table without model metadata).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    filters = []
    box = validate_bbox(bbox) if bbox is not None else None
    if where is not None:
        if not isinstance(where, str) or not where.strip():
            raise ValueError("where must be a non-empty SQL expression")
        filters.append(f"({where})")
    near_point = None
    if near is not None:
        near_point = geo.validate_near(near)
        filters.append(geo.near_filter(near_point) or f"({store.LON_MIN} IS NOT NULL)")
    tbl = store.open_table(db, table)
    model, dim = store.table_model(tbl)
    self_ids: set[str] = set()
    if _is_image_query(query):
        image = query
        if isinstance(query, (str, os.PathLike)):
            image = read_image(query)
            self_ids = _self_ids(query, image) if exclude_self else set()
        vector = query_vector(image, model, dim)
    else:
        vector = query_vector(query, model, dim)
        exclude_self = False
    if vector.shape[0] != dim:
        raise ValueError(f"model {model} gives {vector.shape[0]}-d embeddings, table {table!r} holds {dim}-d")

    def keep(frame: pd.DataFrame) -> np.ndarray:
        mask = np.ones(len(frame), dtype=bool)
        if near_point is not None:
            mask &= geo.within(near_point, frame)
        if exclude_self:
            mask &= ~frame[store.ID].isin(self_ids).to_numpy()
            mask &= frame["score"].to_numpy() < 1.0 - SELF_MATCH_DISTANCE
        return mask

    post = keep if (near_point is not None or exclude_self) else None
    return search_filtered(tbl, vector, int(k), where=" AND ".join(filters) or None, keep=post,
                           resident=resident, bbox=box)


def _is_image_query(query) -> bool:
    if isinstance(query, str):
        return _looks_like_image_path(query)
    if isinstance(query, (os.PathLike, Image.Image)):
        return True
    return isinstance(query, np.ndarray) and query.ndim in (2, 3) and query.dtype == np.uint8


def _self_ids(query: str | os.PathLike, image: np.ndarray) -> set[str]:
    """Ids the query image's own whole-image tile can have in a table: its uri as given, absolute, file://."""
    text = str(query)
    uris = {text}
    if not text.startswith("s3://"):
        local = str(Path(text[len("file://"):] if text.startswith("file://") else text))
        uris |= {local, os.path.abspath(local), os.path.realpath(local), "file://" + os.path.abspath(local)}
    h, w = image.shape[:2]
    return {store.tile_id(u, 0, 0, w, h) for u in uris}


def search_filtered(
    table,
    vector: np.ndarray,
    k: int,
    *,
    where: str | None = None,
    keep=None,
    resident: bool = False,
    bbox: BBox | None = None,
) -> pd.DataFrame:
    """The ``k`` best rows passing the SQL prefilter ``where``, the box ``bbox`` and the row predicate ``keep``.

    ``keep(frame) -> bool mask`` decides what SQL cannot (exact great-circle distance, the query tile).
    Candidates are fetched best first with a growing limit until ``k`` pass or the filter is exhausted, so
    ``k`` rows come back whenever ``k`` qualify. A prefilter keeping few rows (``EXACT_FILTER_ROWS``) is
    answered by an exact scan of those rows. ``resident``: see :func:`search_table`.
    """
    if resident:  # the filters are evaluated once, not again for each wider fetch
        rows = resident_table(table, _FETCH_COLUMNS)
        candidates = _resident_candidates(rows, where, bbox, exact=False)

        def search(n: int) -> pd.DataFrame:
            return _search_resident(rows, vector, n, candidates=candidates, where=where, bbox=bbox,
                                    nprobes=DEFAULT_NPROBES, refine_factor=DEFAULT_REFINE_FACTOR)
    else:
        where = _filter_sql(where, bbox)
        exact = bool(where) and store.has_vector_index(table) and (
            store.dataset_of(table).count_rows(filter=where) <= EXACT_FILTER_ROWS)

        def search(n: int) -> pd.DataFrame:
            return search_table(table, vector, n, where=where, exact=exact)
    if keep is None:
        return search(k)
    limit = min(MAX_K * 4, max(2 * k, k + 16))
    while True:
        frame = search(limit)
        kept = frame[keep(frame)]
        if len(kept) >= k or len(frame) < limit or limit >= table.count_rows():
            return kept.head(k).reset_index(drop=True)
        limit *= 4
