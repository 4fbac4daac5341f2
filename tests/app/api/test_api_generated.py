"""The API against generated requests (hypothesis): any search body or items query a client may send is answered
(200) or refused with a one-line error (400, 404, 413), never an internal error (500) or a dropped connection."""

from __future__ import annotations

import base64
import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rsclip.table import tiles

REFUSED = (400, 404, 413)
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
junk = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
boxes = st.tuples(st.floats(-180, 180), st.floats(-90, 90)).flatmap(
    lambda corner: st.tuples(st.floats(corner[0], 180), st.floats(corner[1], 90)).map(lambda far: [*corner, *far]))


def png_data(side: int) -> str:
    out = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 120, np.uint8)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def field_values(ids: list[str], dim: int) -> dict:
    """Per field of a search body, values of the right kind (some out of range)."""
    tile_ids = st.sampled_from(ids) | st.text(max_size=40)
    return {
        "text": st.text(max_size=60),
        "vector": st.lists(st.floats(-2, 2), min_size=dim, max_size=dim) | st.lists(st.floats(), max_size=4),
        "tile_id": tile_ids,
        "image": st.fixed_dictionaries({"name": st.sampled_from(["a.png", "a.jpg", "a.tif", "a", "a.svg"]),
                                        "data": st.sampled_from([png_data(2), png_data(40), "", "!!"])}),
        "positive": st.lists(tile_ids, max_size=3),
        "negative": st.lists(tile_ids, max_size=3),
        "k": st.integers(1, 50) | st.integers(-5, 20_000),
        "bbox": boxes | st.lists(st.floats(-200, 200) | st.integers(-200, 200), max_size=5),
        "near": st.tuples(st.floats(-180, 180), st.floats(-90, 90), st.floats(0, 5000)).map(list)
        | st.lists(st.floats(-200, 5000), max_size=4),
        "polygon": st.sampled_from(["POLYGON((-180 -90, 180 -90, 180 90, -180 -90))", "POLYGON((0 0, 1 0, 1 1, 0 0))",
                                    "POLYGON((0 0", '{"type": "Polygon"}']),
        "date": st.sampled_from(["1900/2100", "2020-01-01/..", "../2021-05", "x/y", "2021/2020"]),
        "max_cloud": st.floats(0, 100) | st.floats(-10, 200),
        "max_nodata": st.floats(0, 1) | st.floats(-1, 2),
        "where": st.sampled_from(["x > 10", "uri LIKE '%.tif'", "1 = 1", "x >", "nope = 1"]),
        "include_self": st.booleans(),
        "allow_model_mismatch": st.booleans(),
        "table": st.sampled_from([tiles.DEFAULT_TABLE, tiles.DEFAULT_TABLE, "nope", "../x"]),
        "unknown": junk,
    }


QUERIES = ["text", "vector", "tile_id", "image", "positive"]


@st.composite
def search_bodies(draw, ids: list[str], dim: int):
    """One query field and up to three others, each of the right kind three times in four, else anything."""
    values = field_values(ids, dim)
    names = [draw(st.sampled_from(QUERIES))]
    others = sorted(set(values) - set(QUERIES)) + [draw(st.sampled_from(QUERIES))]  # two queries: refused
    names += draw(st.lists(st.sampled_from(others), max_size=3, unique=True).filter(lambda n: names[0] not in n))
    return {name: draw(st.one_of(values[name], values[name], values[name], junk)) for name in names}


@EXAMPLES
@given(data=st.data())
def test_any_search_body_is_answered_or_refused_in_one_line(scenes, api_service, data):
    db, ids = scenes
    dim = tiles.open_table(db).schema.field(tiles.VECTOR).type.list_size
    body = data.draw(search_bodies(ids, dim), label="body")
    answer = api_service.call("api/search", body)
    assert answer.status == 200 or answer.status in REFUSED, (body, answer.status, answer.body[:300])
    found = answer.json()
    if answer.status != 200:
        assert set(found) == {"code", "description"} and "\n" not in found["description"], found


queries = st.dictionaries(st.sampled_from(["limit", "offset", "bbox", "min_score", "datetime", "f", "sql"]),
                          st.text(max_size=20) | st.integers(-5, 20_000).map(str) |
                          st.lists(st.floats(-200, 200), min_size=4, max_size=4).map(lambda v: ",".join(map(str, v))),
                          max_size=3)


@EXAMPLES
@given(params=queries, collection=st.sampled_from(["detections-fields", "labels-fields", "tiles", "nope"]))
def test_any_items_query_is_answered_or_refused_in_one_line(api_service, params, collection):
    from urllib.parse import urlencode

    answer = api_service.call(f"collections/{collection}/items?{urlencode(params)}")
    assert answer.status == 200 or answer.status in REFUSED, (collection, params, answer.status, answer.body[:300])
    if answer.status != 200:
        assert "\n" not in answer.json()["description"]
