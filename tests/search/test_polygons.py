"""Polygon filters: parsing (GeoJSON, WKT, shapely; holes, multipolygons, the antimeridian), the prefilter plus
exact footprint test on every query mode, through Lance and the resident copy, and malformed input (any value
a caller may send, generated)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import mapping

import rsclip
from rsclip.geo import footprints
from rsclip.table import tiles
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.search.filters import Filters
from rsclip.search.polygons import MAX_POLYGON_VERTICES, parse_polygon
from tests.helpers.geo import NAIP, scene_grid_table

SQUARE = "POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))"


def test_every_form_of_a_polygon_parses_to_the_same_region():
    shape = shapely.from_wkt(SQUARE)
    geojson = mapping(shape)
    forms = [SQUARE, shape, geojson, json.dumps(geojson), {"type": "Feature", "geometry": geojson, "properties": {}},
             {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": geojson}]}]
    regions = [parse_polygon(f) for f in forms]
    assert all(r == regions[0] for r in regions)
    holed = parse_polygon("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0), (4 4, 6 4, 6 6, 4 6, 4 4))")
    assert holed.intersects(np.array([shapely.box(1, 1, 2, 2), shapely.box(4.5, 4.5, 5.5, 5.5), None],
                                     dtype=object)).tolist() == [True, False, False]
    multi = parse_polygon("MULTIPOLYGON(((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5)))")
    assert len(multi.boxes()) == 2


def test_a_polygon_across_the_antimeridian_is_folded_into_two_parts():
    region = parse_polygon("POLYGON((170 -5, 190 -5, 190 5, 170 5, 170 -5))")
    assert region.geometry.geom_type == "MultiPolygon"
    assert sorted(region.boxes()) == [(-180.0, -5.0, -170.0, 5.0), (170.0, -5.0, 180.0, 5.0)]
    polar = parse_polygon("POLYGON((-180 80, 180 80, 180 90, -180 90, -180 80))")
    assert polar.boxes() == [(-180.0, 80.0, 180.0, 90.0)]


@pytest.mark.parametrize("value, message", [
    ("POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))", "not valid: Self-intersection"),
    ("POLYGON((0 0, 1 0", "not valid WKT"),
    ("{\"type\": \"Polygon\", \"coordinates\": 5}", "not a valid GeoJSON"),
    ("{not json", "not valid GeoJSON"),
    ("POINT(1 2)", "Polygon or MultiPolygon, got a Point"),
    ("POLYGON EMPTY", "empty"),
    ("POLYGON((0 0, 0 95, 1 95, 0 0))", "latitude 95"),
    ("POLYGON((0 0, 0 0, 0 0, 0 0))", "not valid"),
    (42, "GeoJSON, WKT or a shapely geometry"),
    ({"type": "FeatureCollection", "features": []}, "no features"),
    ({"type": "FeatureCollection", "features": [1, "x"]}, "no feature objects"),
    ({"type": "Hexagon", "coordinates": []}, "Unknown geometry type: 'hexagon'"),
    ({"type": "Feature", "geometry": {"type": None}}, "not a valid GeoJSON geometry"),
])
def test_malformed_polygons_are_clear_errors(value, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(")):
        parse_polygon(value)


numbers = st.one_of(st.floats(), st.integers(-1000, 1000), st.text(max_size=3), st.none(), st.booleans())
rings = st.lists(st.lists(numbers, max_size=4), max_size=8)
coordinates = st.one_of(numbers, st.lists(rings, max_size=3), st.lists(st.lists(rings, max_size=2), max_size=2))
kinds = st.sampled_from(["Polygon", "MultiPolygon", "Point", "GeometryCollection", "x", None])
geojson = st.recursive(
    st.fixed_dictionaries({"type": kinds, "coordinates": coordinates}),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("Feature"), "geometry": st.one_of(inner, numbers)}),
        st.fixed_dictionaries({"type": st.just("FeatureCollection"),
                               "features": st.lists(st.one_of(inner, numbers), max_size=3)})),
    max_leaves=4)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(value=st.one_of(geojson, geojson.map(json.dumps), st.text(max_size=80)))
def test_any_polygon_value_is_a_region_or_a_clear_error(value):
    """Whatever a caller sends (GeoJSON of any shape, as an object or as text, or any text): a region or
    ``InvalidInput`` (``LimitExceeded`` is one), never another exception."""
    try:
        parse_polygon(value)
    except InvalidInput:
        pass


def test_oversized_polygons_are_refused():
    ring = [(np.cos(t), np.sin(t)) for t in np.linspace(0, 2 * np.pi, MAX_POLYGON_VERTICES + 10)]
    with pytest.raises(LimitExceeded):
        parse_polygon(shapely.Polygon(ring))


@pytest.fixture(scope="module")
def naip_db(tmp_path_factory, tiny_model):
    db = tmp_path_factory.mktemp("polygons") / "db"
    rows = scene_grid_table(db, tiny_model, names=(NAIP,), tile_size=128)
    return db, rows


@pytest.mark.parametrize("resident", [False, True])
def test_polygon_filters_keep_exactly_the_tiles_whose_footprint_intersects(naip_db, resident):
    db, rows = naip_db
    shapes = [shapely.from_wkb(r[tiles.FOOTPRINT]) for r in rows]
    centre = shapes[len(shapes) // 2].centroid
    # a thin diagonal triangle: its bbox holds many tiles that the triangle itself misses
    region = shapely.Polygon([(centre.x - 0.02, centre.y - 0.01), (centre.x + 0.02, centre.y + 0.01),
                              (centre.x + 0.0205, centre.y + 0.0098)])
    want = {tiles.tile_id(r[tiles.URI], *[r[c] for c in tiles.WINDOW_COLUMNS])
            for r, s in zip(rows, shapes) if s.intersects(region)}
    in_box = sum(shapely.box(*region.bounds).intersects(s) for s in shapes)
    assert 0 < len(want) < in_box
    vector = np.ones(32, np.float32)
    hits = rsclip.query(db, vector, k=len(rows), polygon=region.wkt, resident=resident)
    assert set(hits[tiles.ID]) == want and hits["score"].is_monotonic_decreasing
    some = list(want)[0]
    similar = rsclip.similar_tiles(db, some, k=len(rows), polygon=mapping(region), resident=resident)
    assert set(similar[tiles.ID]) == want - {some}
    examples = rsclip.query(db, positive=[some], k=len(rows), polygon=region)
    assert set(examples[tiles.ID]) == want - {some}
    combined = rsclip.query(db, vector, k=len(rows), polygon=region, bbox=region.bounds, where="x >= 0")
    assert set(combined[tiles.ID]) == want


def test_antimeridian_and_polar_tiles_are_found_by_their_footprints(tmp_path):
    """Tiles stored with wrapped bounds (lon_min > lon_max) and true footprints, and one without footprint."""
    def row(name, bounds, footprint):
        return {"uri": name, "bounds": bounds, "footprint": footprint}

    across = footprints.box_footprint(179.5, 10.0, -179.5, 11.0)
    pole = shapely.box(-180, 85, 180, 90)
    items = [row("across.tif", (179.5, 10.0, -179.5, 11.0), across.wkb),
             row("pole.tif", (-180.0, 85.0, 180.0, 90.0), pole.wkb),
             row("old.tif", (10.0, 10.0, 11.0, 11.0), None),  # a row of an older table: the box of its bounds
             row("plain.jpg", (None,) * 4, None)]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(items), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = {"uri": [i["uri"] for i in items], "x": [0] * 4, "y": [0] * 4, "width": [9] * 4, "height": [9] * 4,
               **{c: [i["bounds"][k] for i in items] for k, c in enumerate(tiles.BOUNDS_COLUMNS)},
               tiles.FOOTPRINT: [i["footprint"] for i in items], "vector": vectors}
    tiles.add_tiles(tiles.create_table(tmp_path, model="none", dim=8), columns)

    def found(polygon):
        return set(rsclip.query(tmp_path, vectors[0], k=4, polygon=polygon)[tiles.URI])

    assert found("POLYGON((170 5, 190 5, 190 15, 170 15, 170 5))") == {"across.tif"}
    assert found("POLYGON((-179.9 10.2, -179.6 10.2, -179.6 10.8, -179.9 10.8, -179.9 10.2))") == {"across.tif"}
    assert found("POLYGON((-179.4 10.2, -179.0 10.2, -179.0 10.8, -179.4 10.8, -179.4 10.2))") == set()
    assert found("POLYGON((40 88, 50 88, 50 89, 40 89, 40 88))") == {"pole.tif"}
    assert found("POLYGON((10.5 10.5, 12 10.5, 12 12, 10.5 12, 10.5 10.5))") == {"old.tif"}
    assert Filters.of(polygon=SQUARE).exact_in_sql is False
