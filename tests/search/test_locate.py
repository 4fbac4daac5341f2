"""rsclip.locate: patch geometry, probabilities, the matching patch first, GeoTIFF bounds, S3, heatmaps."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import rasterio
from PIL import Image

import rsclip
from rsclip.app.cli import main
from rsclip.table import tiles
from rsclip.testing import build_tiny_clip
from rsclip.geo.windows import grid_windows
from rsclip.geo import raster
from rsclip.search.locate import PatchGrid, heatmap, render_heatmap
from rsclip.model.clip import load_model
from rsclip.search.zeroshot import model_logit_scale

from tests.helpers import GEOTIFF_DIR


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def mosaic(rsicd_files):
    """A 300 x 450 image of six different real scenes, 150 px each, in 2 rows and 3 columns."""
    picks = [rsicd_files[i] for i in (10, 400, 800, 1200, 1600, 2000)]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in picks]
    rows = [np.concatenate(arrays[r * 3 : r * 3 + 3], axis=1) for r in range(2)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)), arrays


def coverage(frame, width, height):
    count = np.zeros((height, width), dtype=int)
    for x, y, w, h in frame[["x", "y", "width", "height"]].itertuples(index=False):
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        count[y : y + h, x : x + w] += 1
    return count


def test_tile_patches_cover_the_image_and_probabilities_are_a_softmax(encoder, mosaic):
    image, _ = mosaic
    frame = rsclip.locate(image, "storage tanks", model=encoder, tile=100)
    assert frame.attrs["width"] == 450 and frame.attrs["height"] == 300
    assert (coverage(frame, 450, 300) >= 1).all()
    assert len(frame) == 5 * 3 and set(frame["width"]) == {100} and set(frame["height"]) == {100}
    assert frame["probability"].sum() == pytest.approx(1.0, abs=1e-9)
    scale = model_logit_scale(encoder)
    logits = scale * frame["score"].to_numpy()
    np.testing.assert_allclose(frame["probability"], np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    assert frame["score"].is_monotonic_decreasing
    # each score is the cosine of that patch's own embedding with the text
    text = encoder.encode_texts(["storage tanks"])[0]
    for row in frame.head(3).itertuples(index=False):
        patch = image[row.y : row.y + row.height, row.x : row.x + row.width]
        assert row.score == pytest.approx(float(encoder.encode_images([patch])[0] @ text), abs=1e-5)
    assert frame["lon_min"].isna().all()


def test_grid_partitions_the_image_exactly(encoder, mosaic):
    image, _ = mosaic
    frame = rsclip.locate(image, "a beach", model=encoder, grid=(4, 7))
    assert len(frame) == 28 and (coverage(frame, 450, 300) == 1).all()
    assert sorted(zip(frame["row"], frame["col"])) == [(r, c) for r in range(4) for c in range(7)]


def test_the_patch_cut_from_the_query_pixels_ranks_first(encoder, mosaic):
    image, arrays = mosaic
    for index in (1, 5):
        frame = rsclip.locate(image, arrays[index], model=encoder, grid=(2, 3))
        best = frame.iloc[0]
        assert (best.row, best.col) == divmod(index, 3)
        assert best.score == pytest.approx(1.0, abs=1e-5)
        assert best.probability == frame["probability"].max()


def test_geotiff_patches_carry_lon_lat_bounds(encoder):
    path = GEOTIFF_DIR / "RGB.byte.tif"
    frame = rsclip.locate(path, "a river", model=encoder, tile=224)
    with rasterio.open(path) as src:
        width, height = src.width, src.height
        expected = {w: raster.window_bounds_wgs84(src, w) for w in grid_windows(width, height, 224)}
    assert frame.attrs["crs"] == "EPSG:32618" and (frame.attrs["width"], frame.attrs["height"]) == (width, height)
    assert (coverage(frame, width, height) >= 1).all() and len(frame) == len(expected)
    for row in frame.itertuples(index=False):
        np.testing.assert_allclose((row.lon_min, row.lat_min, row.lon_max, row.lat_max),
                                   expected[(row.x, row.y, row.width, row.height)])
    assert frame["lon_min"].between(-80, -76).all() and frame["lat_min"].between(23, 26).all()
    assert frame["probability"].sum() == pytest.approx(1.0)


def test_geotiff_scores_use_the_raster_module_pixels(encoder):
    path = GEOTIFF_DIR / "cog.tif"  # float64 reflectance: scaled to uint8 by the raster module
    frame = rsclip.locate(path, "fields", model=encoder, grid=(1, 2))
    text = encoder.encode_texts(["fields"])[0]
    with rasterio.open(path) as src:
        scene = raster.describe_scene(src, raster.RasterOptions())
        for row in frame.itertuples(index=False):
            pixels = raster.read_window(src, (row.x, row.y, row.width, row.height), scene)
            assert row.score == pytest.approx(float(encoder.encode_images([pixels])[0] @ text), abs=1e-5)


def test_s3_jpeg_and_geotiff(encoder, s3, s3_prefix, rsicd_files, mosaic):
    fs_client = s3.client()
    bucket, prefix = s3_prefix[len("s3://"):].split("/", 1)
    fs_client.put_object(Bucket=bucket, Key=f"{prefix}/scene.jpg", Body=rsicd_files[3].read_bytes())
    fs_client.put_object(Bucket=bucket, Key=f"{prefix}/rgb.tif", Body=(GEOTIFF_DIR / "RGB.byte.tif").read_bytes())
    local = rsclip.locate(rsicd_files[3], "trees", model=encoder, grid=(2, 2))
    remote = rsclip.locate(f"{s3_prefix}/scene.jpg", "trees", model=encoder, grid=(2, 2))
    np.testing.assert_allclose(remote["score"], local["score"], atol=1e-6)
    tif_local = rsclip.locate(GEOTIFF_DIR / "RGB.byte.tif", "trees", model=encoder, grid=(2, 2))
    tif_remote = rsclip.locate(f"{s3_prefix}/rgb.tif", "trees", model=encoder, grid=(2, 2))
    np.testing.assert_allclose(tif_remote["score"], tif_local["score"], atol=1e-6)
    np.testing.assert_allclose(tif_remote["lon_min"], tif_local["lon_min"])
    png = render_heatmap(f"{s3_prefix}/rgb.tif", tif_remote, f"{s3_prefix}/heat.png")
    assert fs_client.get_object(Bucket=bucket, Key=f"{prefix}/heat.png")["Body"].read() == png


def test_heatmap_png(encoder, mosaic, tmp_path):
    image, arrays = mosaic
    frame = rsclip.locate(image, arrays[4], model=encoder, grid=(2, 3))
    values = heatmap(frame, 450, 300)
    assert values[200, 200] == frame["probability"].max()  # patch (1, 1) holds arrays[4]
    out = tmp_path / "heat.png"
    data = render_heatmap(image, frame, out, alpha=0.6)
    assert out.read_bytes() == data
    png = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert png.shape == image.shape
    # the overlay changes the picture, and the hottest patch gets the colour map's hot end
    assert np.abs(png.astype(int) - image.astype(int)).mean() > 5
    from matplotlib import colormaps

    worst = frame.iloc[-1]
    for (y, x), level in (((200, 200), 1.0), ((int(worst.y) + 5, int(worst.x) + 5), 0.0)):
        colour = np.asarray(colormaps["inferno"](level)[:3]) * 255.0
        expected = np.round(image[y, x] * 0.4 + colour * 0.6)
        np.testing.assert_allclose(png[y, x], expected, atol=1)


def test_patch_grid_validation():
    with pytest.raises(ValueError, match="tile"):
        PatchGrid(tile=1)
    with pytest.raises(ValueError, match="grid"):
        PatchGrid(grid=(0, 2))
    with pytest.raises(ValueError, match="overlap"):
        PatchGrid(tile=10, overlap=10)
    with pytest.raises(ValueError, match="finer"):
        PatchGrid(grid=(3, 500)).windows(450, 300)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(text=""), "non-empty text"),
        (dict(text="x", tile=100, grid=(2, 2)), "either tile or grid"),
        (dict(text="x", grid=(1000, 1)), "finer"),
        (dict(text="x", tile=1), "tile"),
        (dict(text="x", image="/nonexistent/scene.jpg"), "scene.jpg"),
        (dict(text="x", image="/nonexistent/scene.tif"), "scene.tif"),
        (dict(text="x", image=np.zeros((10, 10), dtype=np.float32)), "uint8"),
        (dict(text=3.0), "text or an example image"),
    ],
)
def test_bad_input(encoder, mosaic, kwargs, message):
    image = kwargs.pop("image", mosaic[0])
    with pytest.raises(ValueError, match=message):
        rsclip.locate(image, kwargs.pop("text"), model=encoder, **kwargs)


def test_without_a_model_the_tables_model_scores_the_patches(tmp_path, tiny_model, mosaic, capsys):
    """Issues 24 and 25: given a table (``db``, ``--db``), its own model scores, not the hub's default."""
    own = build_tiny_clip(tmp_path / "own", seed=3)
    db = tmp_path / "db"
    tiles.create_table(db, model=str(own), dim=32)
    image = mosaic[0]
    by_table = rsclip.locate(image, "a beach", db=db, grid=(2, 3))
    want = rsclip.locate(image, "a beach", model=str(own), grid=(2, 3))
    np.testing.assert_allclose(by_table["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6)
    other = rsclip.locate(image, "a beach", model=str(tiny_model), grid=(2, 3))
    differs = np.abs(by_table.sort_index()["score"].to_numpy() - other.sort_index()["score"].to_numpy())
    assert differs.max() > 1e-4  # so the check above could fail
    Image.fromarray(image).save(tmp_path / "mosaic.png")
    capsys.readouterr()
    assert main(["locate", str(tmp_path / "mosaic.png"), "a beach", "--grid", "2", "3", "--db", str(db),
                 "--top", "0", "--json"]) == 0
    patches = json.loads(capsys.readouterr().out)["patches"]
    np.testing.assert_allclose([p["score"] for p in patches], by_table["score"].to_numpy(), atol=1e-5)
