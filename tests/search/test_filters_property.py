"""Every search path against brute force on generated filters (hypothesis): a filtered search returns the exact
top k of the rows its filters keep, through Lance and both resident tiers, ranked directly or through the index,
and through two shards searched apart and merged.

The table mixes what real archives hold: tiles of many sizes over the whole globe, some without bounds (chips
without a georeference), footprints stored for some tiles and not for others (older tables), unknown times,
cloud covers and nodata shares. Hypothesis draws the query, ``k`` and any combination of ``bbox`` (including
boxes touching a tile's edge), ``near``, ``polygon``, ``date``, ``max_cloud``, ``max_nodata`` and ``where``; the
expected answer is computed here from the table's rows with shapely, not with rsclip's filter code (``near``'s
distance excepted: :func:`rsclip.search.near.box_distance_km`, checked against dense sampling in
test_query_modes.py).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rsclip
from rsclip.search import searchers
from rsclip.search.filters import Filters
from rsclip.search.near import box_distance_km
from rsclip.search.shards import search_shards
from rsclip.table import tiles
from rsclip.table import index as rindex
from tests.helpers.vectors import clustered, resident_in_tier, unit_centers

DIM = 32
ROWS = 5000
EPOCH = dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc)
DAYS = 3650  # tiles seen over ten years from EPOCH
# The same examples every run (derandomize), no database of failing examples (hypothesis keeps its own cache
# in .hypothesis/, ignored by git).
EXAMPLES = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def generated_rows(rng, n: int, centers: np.ndarray) -> dict:
    """Tile columns of ``n`` generated tiles (see the module doc)."""
    size = np.exp(rng.uniform(np.log(0.01), np.log(5.0), n))
    lon, lat = rng.uniform(-180.0, 180.0 - size), rng.uniform(-90.0, 90.0 - size)
    located = rng.random(n) > 0.05
    nan = lambda keep, values: np.where(keep, values, np.nan)  # noqa: E731
    boxes = [shapely.box(a, b, a + s, b + s) for a, b, s in zip(lon, lat, size)]
    stored = located & (rng.random(n) < 0.5)
    when = [EPOCH + dt.timedelta(seconds=float(s)) if rng.random() > 0.1 else None
            for s in rng.uniform(0, DAYS * 86400.0, n)]
    return {"uri": [f"s3://archive/tile-{i}.tif" for i in range(n)], "x": rng.integers(0, 1000, n),
            "y": np.zeros(n, int), "width": np.full(n, 224), "height": np.full(n, 224),
            "vector": clustered(rng, n, centers), "lon_min": nan(located, lon), "lat_min": nan(located, lat),
            "lon_max": nan(located, lon + size), "lat_max": nan(located, lat + size),
            "footprint": [shapely.to_wkb(b) if keep else None for b, keep in zip(boxes, stored)],
            "datetime": when, "cloud_cover": nan(rng.random(n) > 0.1, rng.uniform(0, 100, n)),
            "nodata_fraction": nan(rng.random(n) > 0.1, rng.uniform(0, 1, n))}


@pytest.fixture(scope="module")
def generated_db(tiny_model, tmp_path_factory):
    rng = np.random.default_rng(11)
    centers = unit_centers(rng, 40, DIM)
    db = tmp_path_factory.mktemp("filters-property") / "db"
    table = tiles.create_table(db, model=str(tiny_model), dim=DIM)
    rows = generated_rows(rng, ROWS, centers)
    shards = []
    for i, part in enumerate((slice(0, ROWS // 2), slice(ROWS // 2, ROWS))):  # two fragments; two shards
        half = {c: v[part] for c, v in rows.items()}
        tiles.add_tiles(table, half)
        shard = db.parent / f"shard{i}"
        tiles.add_tiles(tiles.create_table(shard, model=str(tiny_model), dim=DIM), half)
        rindex.build_index(shard, min_rows=1000)
        shards.append(shard)
    rindex.build_index(db, min_rows=1000)
    frame = tiles.open_table(db).to_pandas()
    return db, centers, frame, shards


PATHS = ["lance", "memory", "compact", "memory-through-index", "compact-through-index"]


@pytest.fixture(params=PATHS)
def path(request, generated_db, monkeypatch, index_small_tables):
    """How the searches of a test run: through Lance, or a fresh resident cache holding the table in the tier
    named (its filtered searches ranking the kept rows directly, or asking the index among them)."""
    tier, _, through = request.param.partition("-")
    if tier != "lance":
        resident_in_tier(monkeypatch, generated_db[0], tier)
    if through:
        monkeypatch.setattr(searchers, "RESIDENT_EXACT_ROWS", 0)
        monkeypatch.setattr(searchers, "COMPACT_EXACT_ROWS", 0)
    return request.param


SIDES = ["west", "east", "south", "north"]
lons = st.floats(-180.0, 180.0)
lats = st.floats(-90.0, 90.0)


@st.composite
def touching_boxes(draw, frame: pd.DataFrame):
    """``(box, row)``: a box sharing only an edge with the tile of row ``row`` of ``frame``, on any of its four
    sides (touching counts), reaching up to 20 degrees away from it."""
    row = int(np.flatnonzero(frame["lon_min"].notna())[draw(st.integers(0, 999))])
    lon_min, lat_min, lon_max, lat_max = (float(frame[c].iloc[row]) for c in tiles.BOUNDS_COLUMNS)
    reach = draw(st.floats(0.0, 20.0))
    box = {"west": (max(lon_min - reach, -180.0), lat_min, lon_min, lat_max),
           "east": (lon_max, lat_min, min(lon_max + reach, 180.0), lat_max),
           "south": (lon_min, max(lat_min - reach, -90.0), lon_max, lat_min),
           "north": (lon_min, lat_max, lon_max, min(lat_max + reach, 90.0))}[draw(st.sampled_from(SIDES))]
    return box, row


def boxes(frame: pd.DataFrame):
    """``(box, row)``: a box anywhere (row None), or one touching the tile of ``row`` (:func:`touching_boxes`)."""
    anywhere = st.tuples(st.tuples(lons, lons).map(sorted), st.tuples(lats, lats).map(sorted)).map(
        lambda lon_lat: ((lon_lat[0][0], lon_lat[1][0], lon_lat[0][1], lon_lat[1][1]), None))
    return st.one_of(anywhere, touching_boxes(frame))


@st.composite
def polygons(draw):
    """A triangle (anywhere, any size) as WKT."""
    points = draw(st.lists(st.tuples(lons, lats), min_size=3, max_size=3, unique=True))
    polygon = shapely.Polygon(points)
    if not polygon.is_valid or polygon.area < 1e-6:
        polygon = shapely.box(points[0][0], points[0][1], points[0][0] + 1.0, min(points[0][1] + 1.0, 90.0))
    return polygon.wkt


@st.composite
def date_ranges(draw):
    """``(start, end)`` days, either end open (not both)."""
    first, last = sorted(draw(st.tuples(st.integers(-30, DAYS + 30), st.integers(-30, DAYS + 30))))
    day = lambda n: (EPOCH + dt.timedelta(days=n)).date().isoformat()  # noqa: E731
    ends = draw(st.sampled_from(["both", "from", "until"]))
    return (day(first) if ends != "until" else None, day(last) if ends != "from" else None)


@st.composite
def filter_sets(draw, frame: pd.DataFrame):
    """Up to three filters at once (more would rarely leave a row for the others to decide)."""
    kinds = {"bbox": boxes(frame), "polygon": polygons(), "date": date_ranges(),
             "near": st.tuples(lons, lats, st.sampled_from([0.0, 10.0, 300.0, 3000.0])),
             "max_cloud": st.floats(0.0, 100.0), "max_nodata": st.floats(0.0, 1.0), "where": st.integers(0, 1000)}
    names = draw(st.lists(st.sampled_from(sorted(kinds)), max_size=3, unique=True))
    return {name: draw(kinds[name]) for name in names}


def kept(frame: pd.DataFrame, filters: dict) -> np.ndarray:
    """The rows the filters keep, computed from the rows themselves."""
    keep = np.ones(len(frame), dtype=bool)
    bounds = [frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in tiles.BOUNDS_COLUMNS]
    located = np.isfinite(bounds[0])
    footprints = np.array([shapely.from_wkb(w) if w else (shapely.box(*b) if ok else None)
                           for w, ok, *b in zip(frame["footprint"], located, *bounds)], dtype=object)
    with np.errstate(invalid="ignore"):
        if "bbox" in filters:
            keep &= located & shapely.intersects(shapely.box(*filters["bbox"]), footprints)
        if "polygon" in filters:
            keep &= located & shapely.intersects(shapely.from_wkt(filters["polygon"]), footprints)
        if "near" in filters:
            lon, lat, radius = filters["near"]
            keep &= located & (np.nan_to_num(box_distance_km(lon, lat, *bounds), nan=np.inf) <= radius)
        if "date" in filters:
            when = frame["datetime"]
            start, end = filters["date"]
            keep &= when.notna().to_numpy()
            if start is not None:
                keep &= (when >= pd.Timestamp(start, tz="UTC")).to_numpy()
            if end is not None:
                keep &= (when < pd.Timestamp(end, tz="UTC") + pd.Timedelta(days=1)).to_numpy()
        if "max_cloud" in filters:
            keep &= frame["cloud_cover"].to_numpy(dtype=np.float64, na_value=np.nan) <= filters["max_cloud"]
        if "max_nodata" in filters:
            keep &= frame["nodata_fraction"].to_numpy(dtype=np.float64, na_value=np.nan) <= filters["max_nodata"]
        if "where" in filters:
            keep &= frame["x"].to_numpy() < filters["where"]
    return keep


def arguments(filters: dict) -> dict:
    """The filters as :func:`rsclip.query` takes them."""
    out = dict(filters)
    if "where" in out:
        out["where"] = f"x < {out['where']}"
    return out


def drawn_case(data, frame: pd.DataFrame, centers: np.ndarray) -> tuple[dict, int, np.ndarray]:
    """Filters (:func:`filter_sets`), ``k`` and a query: near a cluster, near none, or the tile a drawn box
    touches (which ranks first whenever the filters keep it)."""
    filters = data.draw(filter_sets(frame), label="filters")
    k = data.draw(st.integers(1, 40), label="k")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    touched = filters["bbox"][1] if "bbox" in filters else None
    if "bbox" in filters:
        filters["bbox"] = filters["bbox"][0]
    how = data.draw(st.sampled_from(["near a cluster", "near no cluster", "the touched tile"]), label="query")
    if how == "the touched tile" and touched is not None:
        return filters, k, np.asarray(frame["vector"].iloc[touched], dtype=np.float32)
    if how == "near no cluster":
        return filters, k, unit_centers(rng, 1, DIM)[0].astype(np.float32)
    return filters, k, clustered(rng, 1, centers)[0]


def assert_exact_top_k(got: pd.DataFrame, frame: pd.DataFrame, filters: dict, q: np.ndarray, k: int) -> None:
    rows = frame[kept(frame, filters)]
    scores = np.stack(rows["vector"].to_numpy()) @ q if len(rows) else np.zeros(0)
    want = rows.iloc[np.argsort(-scores, kind="stable")[:k]]
    assert got["id"].tolist() == want["id"].tolist(), (filters, k)
    np.testing.assert_allclose(got["score"].to_numpy(), np.sort(scores)[::-1][:k], atol=1e-5)


@EXAMPLES
@given(data=st.data())
def test_filtered_searches_return_the_exact_top_k_of_the_rows_kept(generated_db, path, data):
    db, centers, frame, _ = generated_db
    filters, k, q = drawn_case(data, frame, centers)
    got = rsclip.query(db, q, k=k, resident=path != "lance", **arguments(filters))
    assert got.attrs["search_path"].startswith("lance" if path == "lance" else "resident")
    assert_exact_top_k(got, frame, filters, q, k)


@EXAMPLES
@given(data=st.data())
def test_two_shards_searched_apart_and_merged_return_the_exact_top_k(generated_db, data):
    """The same through :func:`rsclip.search.shards.search_shards` over the table cut in two (each indexed)."""
    _, centers, frame, shards = generated_db
    filters, k, q = drawn_case(data, frame, centers)
    parts = [searchers.searcher_for(tiles.open_table(shard)) for shard in shards]
    assert_exact_top_k(search_shards(parts, q, k, Filters.of(**arguments(filters))), frame, filters, q, k)


@EXAMPLES
@given(data=st.data())
def test_a_box_sharing_only_an_edge_with_a_tile_keeps_it(generated_db, path, data):
    db, _, frame, _ = generated_db
    box, row = data.draw(touching_boxes(frame), label="box, tile")
    got = rsclip.query(db, np.asarray(frame["vector"].iloc[row], dtype=np.float32), k=1, bbox=box,
                       resident=path != "lance")
    assert got["id"].tolist() == [frame["id"].iloc[row]], (path, box)
