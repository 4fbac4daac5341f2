"""Query modes: image->image self-exclusion, exact ``near=`` and ``bbox=`` filters against brute force."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import rsclip
from rsclip.table import tiles
from rsclip.search.near import EARTH_RADIUS_KM, box_distance_km
from rsclip.model.clip import load_model
from rsclip.search.searchers import MAX_K
from tests.helpers import spread_files, write_scene_table

N_IMAGES = 60


@pytest.fixture(scope="module")
def image_db(tiny_model, rsicd_files, tmp_path_factory):
    """Real scenes embedded with the tiny model, stored under their absolute paths (whole-image windows)."""
    files = spread_files(rsicd_files, N_IMAGES)
    db = tmp_path_factory.mktemp("modes") / "db"
    vectors = write_scene_table(db, tiny_model, files)
    return db, files, vectors


@pytest.fixture(params=[False, True], ids=["lance", "resident"])
def resident(request):
    """Query-mode tests run through Lance and through the resident copy (``rsclip.resident``)."""
    return request.param


def ranked_ids(db, vector, k, drop=()):
    frame = tiles.open_table(db).to_pandas()
    frame = frame[~frame["id"].isin(drop)]
    scores = np.stack(frame["vector"].to_numpy()) @ (vector / np.linalg.norm(vector))
    order = np.argsort(-scores, kind="stable")[:k]
    return frame.iloc[order]["id"].tolist()


def test_image_query_by_path_excludes_its_own_tile(image_db, resident):
    db, files, vectors = image_db
    path = files[7]
    own = tiles.tile_id(str(path), 0, 0, 150, 150)
    got = rsclip.query(db, path, k=10, resident=resident)
    assert own not in set(got["id"]) and len(got) == 10
    assert got["id"].tolist() == ranked_ids(db, vectors[7], 10, drop={own})
    with_self = rsclip.query(db, str(path), k=10, exclude_self=False, resident=resident)
    assert with_self["id"].iloc[0] == own and with_self["score"].iloc[0] > 0.9999
    assert with_self["id"].tolist()[1:] == got["id"].tolist()[:9]


def test_in_memory_image_excludes_the_identical_embedding(image_db, resident):
    db, files, vectors = image_db
    array = np.asarray(Image.open(files[3]).convert("RGB"))
    own = tiles.tile_id(str(files[3]), 0, 0, 150, 150)
    for q in (array, Image.fromarray(array)):
        got = rsclip.query(db, q, k=5, resident=resident)
        assert own not in set(got["id"]) and len(got) == 5
        assert got["id"].tolist() == ranked_ids(db, vectors[3], 5, drop={own})
    assert rsclip.query(db, array, k=5, exclude_self=False, resident=resident)["id"].iloc[0] == own


def test_image_not_in_table_and_vector_queries_exclude_nothing(image_db, rsicd_files):
    db, files, vectors = image_db
    outsider = next(f for f in rsicd_files if f not in set(files))
    enc = load_model(tiles.table_model(tiles.open_table(db))[0])
    v = enc.encode_images([np.asarray(Image.open(outsider).convert("RGB"))])[0]
    assert rsclip.query(db, outsider, k=8)["id"].tolist() == ranked_ids(db, v, 8)
    # a vector query is not an image: the row equal to it stays first
    assert rsclip.query(db, vectors[11], k=3)["id"].iloc[0] == tiles.tile_id(str(files[11]), 0, 0, 150, 150)


def test_self_exclusion_keeps_k_results_when_the_table_is_small(image_db, resident):
    db, files, _ = image_db
    got = rsclip.query(db, files[0], k=MAX_K, resident=resident)
    assert len(got) == N_IMAGES - 1


# --- geo filters --------------------------------------------------------------------------------------------

# Hand-made tiles on the awkward places of the globe, plus random ones.
EDGE_TILES = {
    "east_edge": (179.5, -0.5, 180.0, 0.5),
    "west_edge": (-180.0, -0.5, -179.8, 0.5),
    "north_cap": (170.0, 89.7, 180.0, 89.8),
    "north_pole": (-10.0, 89.95, 10.0, 90.0),
    "south_pole": (-180.0, -90.0, 180.0, -89.9),
    "left_of_point": (9.0, 45.0, 10.0, 46.0),
    "right_of_point": (10.0, 45.0, 11.0, 46.0),
    "corner": (10.0, 46.0, 10.5, 46.5),
    "degenerate_point": (20.0, 20.0, 20.0, 20.0),
    "wide": (-120.0, -10.0, 120.0, -9.0),
}


@pytest.fixture(scope="module")
def geo_db(tiny_model, tmp_path_factory):
    """600 random tiles (30 without bounds) plus EDGE_TILES, with random 32-d vectors."""
    rng = np.random.default_rng(11)
    n = 600
    size_lon, size_lat = rng.uniform(0.01, 3.0, n), rng.uniform(0.01, 3.0, n)
    lon = rng.uniform(-180.0, 180.0 - size_lon)
    lat = rng.uniform(-90.0, 90.0 - size_lat)
    boxes = [tuple(b) for b in np.column_stack([lon, lat, lon + size_lon, lat + size_lat]).round(4)]
    names = [f"random/{i}" for i in range(n)] + list(EDGE_TILES)
    boxes += list(EDGE_TILES.values())
    vectors = rng.normal(size=(len(names), 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cols = {c: [b[i] if j >= n or j % 20 != 5 else None for j, b in enumerate(boxes)] for i, c in enumerate(tiles.BOUNDS_COLUMNS)}
    db = tmp_path_factory.mktemp("geo") / "db"
    tiles.add_tiles(tiles.create_table(db, model=str(tiny_model), dim=32),
                    dict(uri=names, x=[0] * len(names), y=[0] * len(names), width=[1] * len(names),
                         height=[1] * len(names), vector=vectors, **cols))
    return db


def brute(db, vector, k, mask, with_scores=False):
    frame = tiles.open_table(db).to_pandas()
    frame = frame[mask(frame)]
    scores = np.stack(frame["vector"].to_numpy()) @ (vector / np.linalg.norm(vector))
    order = np.argsort(-scores, kind="stable")[:k]
    ids = frame.iloc[order]["uri"].tolist()
    return (ids, scores[order]) if with_scores else ids


def near_mask(lon, lat, radius):
    def mask(f):
        d = box_distance_km(lon, lat, f.lon_min.astype(float), f.lat_min.astype(float),
                                f.lon_max.astype(float), f.lat_max.astype(float))
        return np.nan_to_num(d, nan=np.inf) <= radius
    return mask


def sampled_distance_km(lon, lat, box, n=201):
    """Upper bound on the distance from a point to a box: the nearest of n x n points of the box."""
    lons = np.linspace(box[0], box[2], n)
    lats = np.linspace(box[1], box[3], n)
    glon, glat = np.meshgrid(np.radians(lons), np.radians(lats))
    p_lon, p_lat = math.radians(lon), math.radians(lat)
    hav = np.sin((glat - p_lat) / 2) ** 2 + np.cos(glat) * math.cos(p_lat) * np.sin((glon - p_lon) / 2) ** 2
    return float((2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(hav))).min())


@pytest.mark.parametrize("point", [(10.0, 45.5), (179.9, 0.0), (-179.95, 0.3), (0.0, 89.9), (45.0, -89.5),
                                   (-75.0, 40.0), (100.0, -60.0), (10.2, 47.0)])
def test_box_distance_matches_dense_sampling(point):
    rng = np.random.default_rng(int(abs(point[0] * 10 + point[1])))
    boxes = list(EDGE_TILES.values()) + [
        (a, b, a + w, b + h)
        for a, b, w, h in zip(rng.uniform(-180, 170, 25), rng.uniform(-90, 80, 25), rng.uniform(0.1, 10, 25), rng.uniform(0.1, 10, 25))
    ]
    arr = np.array(boxes)
    exact = box_distance_km(point[0], point[1], arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
    for box, d in zip(boxes, exact):
        sampled = sampled_distance_km(point[0], point[1], box)
        step_km = max(box[2] - box[0], box[3] - box[1]) / 200 * 111.2
        assert d <= sampled + 1e-6, (box, d, sampled)
        assert sampled - d <= step_km + 1e-3, (box, d, sampled)


def test_point_inside_or_on_the_edge_is_at_distance_zero():
    assert box_distance_km(9.5, 45.5, 9.0, 45.0, 10.0, 46.0)[()] == 0.0
    assert box_distance_km(10.0, 45.5, 9.0, 45.0, 10.0, 46.0)[()] == 0.0
    assert box_distance_km(10.0, 46.0, 10.0, 46.0, 10.5, 46.5)[()] == 0.0
    # across the antimeridian: 0.3 degrees of longitude on the equator
    assert box_distance_km(179.9, 0.0, -180.0, -0.5, -179.8, 0.5)[()] == pytest.approx(0.1 * 111.195, rel=1e-3)


@pytest.mark.parametrize(
    "near, k",
    [
        ((10.0, 45.5, 0.0), 50),      # radius 0 on the shared edge of two tiles: both
        ((10.0, 46.0, 0.0), 50),      # the shared corner of three tiles
        ((20.0, 20.0, 0.0), 50),      # a degenerate (point) tile
        ((179.9, 0.0, 30.0), 50),     # wraps to the tile at lon -180
        ((-179.99, 0.0, 5.0), 50),    # and back
        ((0.0, 89.9, 40.0), 50),      # across the north pole to lon 170..180
        ((0.0, 90.0, 0.0), 50),       # the pole itself
        ((30.0, -89.95, 10.0), 50),   # a tile that spans all longitudes at the south pole
        ((10.0, 45.5, 800.0), 7),     # many candidates, k smaller than the matches
        ((-60.0, 70.0, 1500.0), 25),  # high latitude: the prefilter box is much wider than the circle
        ((0.0, 0.0, 25000.0), 700),   # the whole globe
    ],
)
def test_near_equals_brute_force(geo_db, near, k, resident):
    vector = np.random.default_rng(int(near[2]) + 3).normal(size=32)
    got = rsclip.query(geo_db, vector, k=k, near=near, resident=resident)
    want, scores = brute(geo_db, vector, k, near_mask(*near), with_scores=True)
    assert len(want) > 0
    if len(want) < 100:
        assert got["uri"].tolist() == want
    else:  # hundreds of random scores hold float32 near-ties: compare the set and the score sequence
        assert set(got["uri"]) == set(want)
        np.testing.assert_allclose(got["score"].to_numpy(), scores, atol=1e-5)


def test_named_edge_cases_are_found(geo_db, resident):
    v = np.ones(32)
    names = lambda **kw: set(rsclip.query(geo_db, v, k=MAX_K, **kw, resident=resident)["uri"])
    assert {"left_of_point", "right_of_point"} <= names(near=(10.0, 45.5, 0.0))
    assert {"left_of_point", "right_of_point", "corner"} <= names(near=(10.0, 46.0, 0.0))
    assert "west_edge" in names(near=(179.9, 0.0, 30.0)) and "east_edge" in names(near=(179.9, 0.0, 30.0))
    assert "west_edge" not in names(near=(179.9, 0.0, 10.0))
    assert "north_cap" in names(near=(0.0, 89.9, 40.0))
    assert "north_cap" not in names(near=(0.0, 89.9, 30.0))  # 0.3 degrees over the pole = 33.4 km
    assert "south_pole" in names(near=(123.0, -89.95, 0.0))


def test_near_returns_k_when_k_qualify_after_widening(geo_db, resident):
    # High latitude: most prefilter candidates lie outside the circle, so the first fetch is not enough.
    near = (-60.0, 70.0, 1500.0)
    frame = tiles.open_table(geo_db).to_pandas()
    qualifying = int(near_mask(*near)(frame).sum())
    got = rsclip.query(geo_db, np.ones(32), k=qualifying, near=near, resident=resident)
    assert len(got) == qualifying > 3


@pytest.mark.parametrize("box", [(10.0, 46.0, 10.0, 46.0), (180.0, -1.0, 180.0, 1.0), (-180.0, 89.0, 180.0, 90.0),
                                 (11.0, 40.0, 12.0, 45.0), (-180.0, -90.0, 180.0, 90.0)])
def test_bbox_edge_cases_equal_brute_force(geo_db, box, resident):
    lon_min, lat_min, lon_max, lat_max = box
    mask = lambda f: (f.lon_min <= lon_max) & (f.lon_max >= lon_min) & (f.lat_min <= lat_max) & (f.lat_max >= lat_min)
    vector = np.random.default_rng(5).normal(size=32)
    got = rsclip.query(geo_db, vector, k=40, bbox=box, resident=resident)
    assert got["uri"].tolist() == brute(geo_db, vector, 40, mask)


def test_near_combines_with_bbox_and_where(geo_db, resident):
    near, box = (10.0, 45.5, 3000.0), (0.0, 30.0, 40.0, 60.0)
    lon_min, lat_min, lon_max, lat_max = box
    vector = np.random.default_rng(9).normal(size=32)
    got = rsclip.query(geo_db, vector, k=15, near=near, bbox=box, where="uri LIKE 'random/%'", resident=resident)
    in_box = lambda f: (f.lon_min <= lon_max) & (f.lon_max >= lon_min) & (f.lat_min <= lat_max) & (f.lat_max >= lat_min)
    want = brute(geo_db, vector, 15, lambda f: near_mask(*near)(f) & in_box(f) & f.uri.str.startswith("random/"))
    assert got["uri"].tolist() == want and len(want) > 3


def test_near_far_from_every_tile_is_empty(geo_db, resident):
    got = rsclip.query(geo_db, np.ones(32), k=5, near=(-150.0, -45.0, 0.0), resident=resident)
    assert isinstance(got, pd.DataFrame) and got.empty


@pytest.mark.parametrize(
    "near, message",
    [
        ((1.0, 2.0), "three"),
        ((1.0, 2.0, 3.0, 4.0), "three"),
        (("a", 2.0, 3.0), "three numbers"),
        ((181.0, 0.0, 1.0), "longitude"),
        ((0.0, -90.5, 1.0), "latitude"),
        ((0.0, 0.0, -1.0), "radius"),
        ((0.0, float("inf"), 1.0), "finite"),
        (5.0, "three numbers"),
    ],
)
def test_bad_near_is_a_clear_value_error(geo_db, near, message):
    with pytest.raises(ValueError, match=message):
        rsclip.query(geo_db, np.ones(32), near=near)
