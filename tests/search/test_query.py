"""rsclip.query against brute force on a real-image table: text, image and vector queries, bbox, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import rsclip
from rsclip.table import tiles
from rsclip.model.clip import load_model
from rsclip.search.encoding import Text
from rsclip.search.searchers import MAX_K
from tests.helpers import spread_files, write_scene_table

N_IMAGES = 240


@pytest.fixture(scope="module")
def table_db(tiny_model, rsicd_files, tmp_path_factory):
    """A local table of real scenes embedded with the tiny model; bounds on most rows, null on some."""
    files = spread_files(rsicd_files, N_IMAGES)
    rng = np.random.default_rng(7)
    lon = rng.uniform(-20, 20, len(files)).round(3)
    lat = rng.uniform(-10, 10, len(files)).round(3)
    size = rng.uniform(0.05, 2.0, len(files)).round(3)
    bounds = dict(lon_min=lon, lat_min=lat, lon_max=lon + size, lat_max=lat + size, crs=["EPSG:4326"] * len(files))
    # chips without georeference
    columns = {c: [None if i % 10 == 0 else v for i, v in enumerate(values)] for c, values in bounds.items()}
    db = tmp_path_factory.mktemp("querydb") / "db"
    write_scene_table(db, tiny_model, files, **columns)
    return db


@pytest.fixture(params=[False, True], ids=["lance", "resident"])
def resident(request):
    """Each query test runs through Lance and through the resident copy (``rsclip.resident``)."""
    return request.param


def brute_force(db, vector, k, mask=None):
    frame = tiles.open_table(db).to_pandas()
    if mask is not None:
        frame = frame[mask(frame)]
    vectors = np.stack(frame["vector"].to_numpy())
    scores = vectors @ (vector / np.linalg.norm(vector))
    order = np.argsort(-scores, kind="stable")[:k]
    return frame.iloc[order]["id"].tolist(), scores[order]


def intersects(box):
    lon_min, lat_min, lon_max, lat_max = box
    return lambda f: (f.lon_min <= lon_max) & (f.lon_max >= lon_min) & (f.lat_min <= lat_max) & (f.lat_max >= lat_min)


def test_text_queries_equal_brute_force(table_db, tiny_model, resident):
    enc = load_model(tiny_model)
    for text in ["airport", "an aerial photograph of a beach", "dense residential area with trees"]:
        got = rsclip.query(str(table_db), text, k=15, resident=resident)
        ids, scores = brute_force(table_db, enc.encode_texts([text])[0], 15)
        assert got["id"].tolist() == ids
        np.testing.assert_allclose(got["score"].to_numpy(), scores, atol=1e-5)
        assert list(got.columns) == ["id", "uri", "score", "x", "y", "width", "height",
                                     "lon_min", "lat_min", "lon_max", "lat_max", "crs",
                                     "datetime", "item_id", "cloud_cover", "nodata_fraction"]
        assert got["score"].is_monotonic_decreasing


def test_image_queries_by_path_pil_and_array_agree(table_db, tiny_model, rsicd_files, resident):
    enc = load_model(tiny_model)
    path = rsicd_files[5]
    array = np.asarray(Image.open(path).convert("RGB"))
    ids, _ = brute_force(table_db, enc.encode_images([array])[0], 10)
    for q in (path, str(path), Image.open(path), array):
        assert rsclip.query(table_db, q, k=10, resident=resident)["id"].tolist() == ids


def test_vector_query_and_connection(table_db, resident):
    rng = np.random.default_rng(3)
    vector = rng.normal(size=tiles.table_model(tiles.open_table(table_db))[1])
    ids, _ = brute_force(table_db, vector, 25)
    assert rsclip.query(tiles.connect(table_db), vector, k=25, resident=resident)["id"].tolist() == ids
    assert rsclip.query(table_db, list(vector * 3.0), k=25, resident=resident)["id"].tolist() == ids


@pytest.mark.parametrize("box", [(-5.0, -5.0, 5.0, 5.0), (-20.0, -10.0, -15.0, 0.0), (0.0, 0.0, 20.0, 10.0)])
def test_bbox_equals_brute_force_filtered(table_db, box, resident):
    vector = np.random.default_rng(4).normal(size=32)
    got = rsclip.query(table_db, vector, k=30, bbox=box, resident=resident)
    ids, _ = brute_force(table_db, vector, 30, intersects(box))
    assert got["id"].tolist() == ids
    frame = tiles.open_table(table_db).to_pandas()
    assert len(got) == min(30, int(intersects(box)(frame).sum())) > 0
    lon_min, lat_min, lon_max, lat_max = box
    assert ((got.lon_min <= lon_max) & (got.lon_max >= lon_min) & (got.lat_min <= lat_max) & (got.lat_max >= lat_min)).all()


def test_bbox_with_no_tiles_gives_an_empty_frame(table_db, resident):
    got = rsclip.query(table_db, np.ones(32), k=10, bbox=(100.0, 50.0, 101.0, 51.0), resident=resident)
    assert got.empty and "score" in got.columns


def test_bbox_touching_a_tile_edge_counts(table_db, resident):
    frame = tiles.open_table(table_db).to_pandas().dropna(subset=["lon_min"])
    row = frame.iloc[0]
    box = (row.lon_max, row.lat_max, min(row.lon_max + 0.0, 180.0), min(row.lat_max + 0.0, 90.0))
    got = rsclip.query(table_db, np.ones(32), k=MAX_K, bbox=box, resident=resident)
    assert row["id"] in set(got["id"])


def test_where_combines_with_bbox(table_db, resident):
    vector = np.random.default_rng(5).normal(size=32)
    got = rsclip.query(table_db, vector, k=20, bbox=(-20, -10, 20, 10), where="uri LIKE '%airport%'", resident=resident)
    ids, _ = brute_force(table_db, vector, 20, lambda f: intersects((-20, -10, 20, 10))(f) & f.uri.str.contains("airport"))
    assert got["id"].tolist() == ids and len(ids) > 0


def test_k_larger_than_table_returns_all(table_db, resident):
    got = rsclip.query(table_db, np.ones(32), k=MAX_K, resident=resident)
    assert len(got) == N_IMAGES and got["id"].is_unique


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query=""), "empty"),
        (dict(query="   \t"), "empty"),
        (dict(query=Text("roads \ud800")), r"holds '\\ud800' at character 7, which is not a character"),
        (dict(query="airport", k=0), "k must be"),
        (dict(query="airport", k=MAX_K + 1), "k must be"),
        (dict(query="airport", k=2.5), "k must be"),
        (dict(query="airport", bbox=(0, 0, 1)), "four"),
        (dict(query="airport", bbox=("a", 0, 1, 1)), "four numbers"),
        (dict(query="airport", bbox=(5, 0, 1, 1)), "inverted"),
        (dict(query="airport", bbox=(0, 5, 1, 1)), "inverted"),
        (dict(query="airport", bbox=(-181, 0, 1, 1)), "longitude"),
        (dict(query="airport", bbox=(0, -91, 1, 1)), "latitude"),
        (dict(query="airport", bbox=(0, 0, float("nan"), 1)), "finite"),
        (dict(query="airport", table="nope"), "unknown table 'nope'"),
        (dict(query=np.ones(7)), "7 values"),
        (dict(query=np.zeros(32)), "non-zero"),
        (dict(query=np.ones((2, 32))), "shape"),
        (dict(query="airport", where="  "), "where"),
    ],
)
def test_bad_input_is_a_clear_value_error(table_db, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rsclip.query(table_db, **kwargs)


def test_table_without_model_metadata_is_refused(tmp_path):
    import lancedb
    import pyarrow as pa

    conn = lancedb.connect(tmp_path / "db")
    conn.create_table("tiles", pa.table({"id": ["a"], "vector": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 0.0], pa.float32()), 2)}))
    with pytest.raises(ValueError, match="no model metadata"):
        rsclip.query(tmp_path / "db", np.ones(2))


def test_unreadable_image_query_names_the_file(table_db, tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not-an-image.jpg"):
        rsclip.query(table_db, Path(bad))


def test_query_on_s3_table(tiny_model, s3_prefix, rsicd_files):
    enc = load_model(tiny_model)
    files = rsicd_files[:20]
    vectors = enc.encode_images([np.asarray(Image.open(f).convert("RGB")) for f in files])
    db = s3_prefix + "/db"
    tiles.add_tiles(tiles.create_table(db, model=str(tiny_model), dim=enc.dim),
                    dict(uri=[str(f) for f in files], x=[0] * 20, y=[0] * 20, width=[150] * 20, height=[150] * 20,
                         vector=vectors))
    got = rsclip.query(db, "storage tanks", k=5)
    ids, _ = brute_force(db, enc.encode_texts(["storage tanks"])[0], 5)
    assert got["id"].tolist() == ids
    assert isinstance(got, pd.DataFrame) and got["lon_min"].isna().all()
