"""rsclip.geo.raster and the raster half of rsclip.ingest: grids, bands, scaling, nodata, bounds, over real S3."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import Window, bounds as window_bounds

from rsclip.geo import raster, windows
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.ingest import batch as B, planning, reading
from tests.helpers import job_windows, GEOTIFF_DIR

NAIP = "m_4709963_se_14_1_20200831.tif"
SCENES = {  # file: (expected CRS, bands)
    "RGB.byte.tif": "EPSG:32618",
    NAIP: "EPSG:26914",
    "2020.tif": "EPSG:4326",
    "cog.tif": "EPSG:4326",
}


def expected_count(length: int, tile: int, overlap: int) -> int:
    """Windows along an axis by arithmetic: ceil((L - T) / S) + 1 steps (one when L <= T)."""
    if length <= tile:
        return 1
    return math.ceil((length - tile) / (tile - overlap)) + 1


@pytest.mark.parametrize("length,tile,overlap", [(791, 224, 0), (718, 224, 32), (224, 224, 0), (100, 224, 0),
                                                 (448, 224, 0), (449, 224, 0), (1000, 256, 128)])
def test_grid_offsets_follow_the_arithmetic_and_stay_inside(length, tile, overlap):
    offsets = windows.grid_offsets(length, tile, overlap)
    assert len(offsets) == expected_count(length, tile, overlap)
    assert offsets[0] == 0
    size = min(tile, length)
    assert all(0 <= o and o + size <= length for o in offsets)  # kept inside the raster
    assert offsets[-1] + size == length  # the edge is covered
    steps = np.diff(offsets)
    assert (steps <= tile - overlap).all() and (steps > 0).all()


def test_grid_windows_cover_the_raster_row_major():
    cells = windows.grid_windows(500, 300, 224, 0)
    assert cells[:3] == [(0, 0, 224, 224), (224, 0, 224, 224), (276, 0, 224, 224)]
    assert len(cells) == 3 * 2 and cells[-1] == (276, 76, 224, 224)
    covered = np.zeros((300, 500), bool)
    for x, y, w, h in cells:
        covered[y : y + h, x : x + w] = True
    assert covered.all()


def test_options_are_validated():
    with pytest.raises(ValueError, match="overlap"):
        raster.RasterOptions(tile_size=224, overlap=224)
    with pytest.raises(ValueError, match="bands"):
        raster.RasterOptions(bands=(1, 2))
    with pytest.raises(ValueError, match="scale"):
        raster.RasterOptions(scale=(5.0, 1.0))


def test_gdal_options_follow_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    opts = storage.gdal_options()
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:9999"
    assert opts["AWS_HTTPS"] == "NO" and opts["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert "AWS_SECRET_ACCESS_KEY" not in opts  # credentials travel in the rasterio session
    creds = storage.gdal_session().get_credential_options()
    assert creds["AWS_ACCESS_KEY_ID"] == "k" and creds["AWS_S3_ENDPOINT"] == "127.0.0.1:9999"
    assert storage.gdal_path("s3://b/k/x.tif") == "/vsis3/b/k/x.tif"


@pytest.fixture(scope="module")
def scenes_on_s3(s3, tmp_path_factory):
    """The real GeoTIFFs uploaded to SeaweedFS; returns {name: s3 uri}."""
    prefix = "rasters-" + tmp_path_factory.mktemp("r").name
    client = s3.client()
    uris = {}
    for name in SCENES:
        client.upload_file(str(GEOTIFF_DIR / name), "rsclip-test", f"{prefix}/{name}")
        uris[name] = f"s3://rsclip-test/{prefix}/{name}"
    return uris


@pytest.mark.parametrize("name", list(SCENES))
def test_grid_plan_over_s3_matches_arithmetic_and_rasterio_bounds(scenes_on_s3, name):
    options = raster.RasterOptions(tile_size=160, overlap=16, max_chip=150)
    rows = planning.plan_raster(scenes_on_s3[name], options)
    with rasterio.open(GEOTIFF_DIR / name) as src:
        w, h, crs, transform = src.width, src.height, src.crs, src.transform
    # windows are anchored to the CRS's grid (issue 17): the job's own windows, in the arithmetic's number or
    # one more per axis where the anchor cuts a partial window at the scene's edge
    want = job_windows(GEOTIFF_DIR / name, 160, 16)
    assert sorted((r[tiles.X], r[tiles.Y]) for r in rows) == sorted((wi.x, wi.y) for wi in want)
    assert expected_count(w, 160, 16) * expected_count(h, 160, 16) <= len(rows) <= (
        (expected_count(w, 160, 16) + 1) * (expected_count(h, 160, 16) + 1))
    assert {r[tiles.CRS] for r in rows} == {SCENES[name]}
    for r in rows:
        x, y, tw, th = (r[c] for c in tiles.WINDOW_COLUMNS)
        assert tw == min(160, w) and th == min(160, h) and x + tw <= w and y + th <= h
        expected = transform_bounds(crs, "EPSG:4326", *window_bounds(Window(x, y, tw, th), transform))
        got = [r[c] for c in tiles.BOUNDS_COLUMNS]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
        assert r[tiles.ID] == tiles.tile_id(scenes_on_s3[name], x, y, tw, th)


def test_scene_below_max_chip_is_tiled_and_whole_only_by_the_old_rule_and_reads_its_pixels(scenes_on_s3):
    uri = scenes_on_s3["RGB.byte.tif"]
    tiled = planning.plan_raster(uri, raster.RasterOptions())  # 791 x 718 px, under --max-chip: a scene all the same
    want = job_windows(GEOTIFF_DIR / "RGB.byte.tif", 224)
    assert [(r[tiles.X], r[tiles.Y], r[tiles.WIDTH], r[tiles.HEIGHT]) for r in tiled] == [tuple(w) for w in want]
    assert len(tiled) > 1
    rows = planning.plan_raster(uri, raster.RasterOptions(), whole_scenes=True)  # how tables cut before took it
    assert [(r[tiles.X], r[tiles.Y], r[tiles.WIDTH], r[tiles.HEIGHT]) for r in rows] == [(0, 0, 791, 718)]
    prep = {"shortest_edge": 718, "crop_height": 224, "crop_width": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    batch = reading.read_tiles(B.rows_to_batch(rows, B.PLAN_COLUMNS), preprocess=prep)
    assert batch[B.STATUS][0] == B.READY
    image = B.batch_images(batch, [0])[0]
    with rasterio.open(GEOTIFF_DIR / "RGB.byte.tif") as src:
        np.testing.assert_array_equal(image, src.read([1, 2, 3]).transpose(1, 2, 0))
        x, y, w, h = want[len(want) // 2]  # a tile inside the scene: its window's pixels, unresized
        expected = src.read([1, 2, 3], window=Window(x, y, w, h)).transpose(1, 2, 0)
    middle = next(i for i, r in enumerate(tiled) if (r[tiles.X], r[tiles.Y]) == (x, y))
    batch = reading.read_tiles(B.rows_to_batch(tiled[middle : middle + 1], B.PLAN_COLUMNS),
                               preprocess={**prep, "shortest_edge": 224})
    assert batch[B.STATUS][0] == B.READY
    np.testing.assert_array_equal(B.batch_images(batch, [0])[0], expected)


def test_band_choice_reads_those_bands(scenes_on_s3):
    scene_uri = scenes_on_s3[NAIP]
    with raster.gdal_env(), rasterio.open(storage.gdal_path(scene_uri)) as src:
        scene = raster.describe_scene(src, raster.RasterOptions(bands=(4, 1, 2)))
        assert scene.bands == (4, 1, 2) and scene.scale_lo is None
        got = raster.read_window(src, (100, 50, 64, 64), scene)
        grey = raster.read_window(src, (100, 50, 64, 64),
                                  raster.describe_scene(src, raster.RasterOptions(bands=(4,))))
        with pytest.raises(ValueError, match=r"bands \[5\] do not exist"):
            raster.describe_scene(src, raster.RasterOptions(bands=(5, 1, 2)))
    with rasterio.open(GEOTIFF_DIR / NAIP) as local:
        want = local.read([4, 1, 2], window=Window(100, 50, 64, 64)).transpose(1, 2, 0)
    np.testing.assert_array_equal(got, want)
    assert grey.shape == (64, 64, 3)
    np.testing.assert_array_equal(grey[..., 0], want[..., 0])
    np.testing.assert_array_equal(grey[..., 2], want[..., 0])


def test_float_scene_is_stretched_by_percentiles_or_fixed_scale(scenes_on_s3):
    with rasterio.open(GEOTIFF_DIR / "cog.tif") as local:
        data = local.read([1, 2, 3]).astype(np.float64)
    lo = np.percentile(data.reshape(3, -1), 2, axis=1)
    hi = np.percentile(data.reshape(3, -1), 98, axis=1)
    with raster.gdal_env(), rasterio.open(storage.gdal_path(scenes_on_s3["cog.tif"])) as src:
        scene = raster.describe_scene(src, raster.RasterOptions())
        np.testing.assert_allclose(scene.scale_lo, lo)
        np.testing.assert_allclose(scene.scale_hi, hi)
        image = raster.read_window(src, (0, 0, src.width, src.height), scene)
        fixed = raster.describe_scene(src, raster.RasterOptions(scale=(0.0, 0.5)))
        fixed_image = raster.read_window(src, (0, 0, src.width, src.height), fixed)
    assert image.dtype == np.uint8
    want = np.clip((data - lo[:, None, None]) / (hi - lo)[:, None, None] * 255, 0, 255).round()
    np.testing.assert_allclose(image.transpose(2, 0, 1), want, atol=1)
    # about 2 % of each band saturates at each end of the stretch
    assert 0.005 < (image[..., 0] == 255).mean() < 0.05
    want_fixed = np.clip(data / 0.5 * 255, 0, 255).round()
    np.testing.assert_allclose(fixed_image.transpose(2, 0, 1), want_fixed, atol=1)


def test_nodata_windows_are_detected(scenes_on_s3):
    """RGB.byte.tif is a rotated scene with nodata (0) corners: windows there are skipped."""
    uri = scenes_on_s3["RGB.byte.tif"]
    rows = planning.plan_raster(uri, raster.RasterOptions(tile_size=64, max_chip=32))
    with rasterio.open(GEOTIFF_DIR / "RGB.byte.tif") as src:
        mask = src.dataset_mask()
    empty = {(r[tiles.X], r[tiles.Y]) for r in rows
             if not mask[r[tiles.Y] : r[tiles.Y] + 64, r[tiles.X] : r[tiles.X] + 64].any()}
    assert empty  # the test needs some all-nodata windows
    batch = reading.read_tiles(B.rows_to_batch(rows, B.PLAN_COLUMNS),
                               preprocess={"shortest_edge": 64, "crop_height": 64, "crop_width": 64,
                                           "mean": [0.5] * 3, "std": [0.5] * 3})
    nodata = {(int(x), int(y)) for x, y, s in zip(batch[tiles.X], batch[tiles.Y], batch[B.STATUS])
              if s == B.NODATA}
    assert nodata == empty
    assert set(batch[B.STATUS]) == {B.NODATA, B.READY}


def _write(path, data, **profile):
    count = data.shape[0]
    meta = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=count, dtype=data.dtype,
                crs="EPSG:32618", transform=from_origin(500000, 4500000, 30, 30))
    meta.update(profile)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return path


def test_bad_rasters_become_plan_errors(tmp_path):
    opts = raster.RasterOptions()
    nodata = _write(tmp_path / "nodata.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    nan = _write(tmp_path / "nan.tif", np.full((1, 64, 64), np.nan, np.float32))
    cplx = _write(tmp_path / "complex.tif", np.ones((1, 32, 32), np.complex64))
    broken = tmp_path / "broken.tif"
    broken.write_bytes((GEOTIFF_DIR / "RGB.byte.tif").read_bytes()[:300])
    expect = {nodata: "all pixels are nodata", nan: "all pixels are nodata", cplx: "unsupported data type complex64",
              broken: "not a readable raster"}
    for path, message in expect.items():
        [row] = planning.plan_file(str(path), path.stat().st_size, opts)
        assert row[B.STATUS] == B.ERROR and row[B.STAGE] == B.STAGE_PLAN
        assert message in row[B.MESSAGE] and str(path) in row[B.MESSAGE]
    ok = _write(tmp_path / "ok.tif", np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50))
    [row] = planning.plan_file(str(ok), ok.stat().st_size, opts)
    assert row[B.STATUS] == B.TODO and json.loads(row[B.SCENE])["dtype"] == "uint16"
