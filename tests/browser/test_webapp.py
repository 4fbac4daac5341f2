"""The web demo (``rsclip serve``), end to end in a real headless Chromium, plus its building blocks.

One real tile table on the S3 server: RSICD scenes (some on S3, some local), the windows of a real Landsat
GeoTIFF on S3 and a float64 GeoTIFF on local disk, embedded with the tiny CLIP. The app runs as the user
runs it (``serve`` -> ``streamlit run``), Debian's chromium is driven by Playwright with flags that keep it
off the network, and every request the page makes must go to the app itself.
"""

from __future__ import annotations

import base64
import errno
import http.client
import io
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform_bounds

from infra.local_stack import free_port
from rsclip.geo.windows import grid_windows
from rsclip.geo import raster
from rsclip.table import tiles
from rsclip.geo.images import read_image
from rsclip.model.clip import load_model
from rsclip.app.web.data.finder import find_feature
from rsclip.app.web.data.previews import read_preview
from rsclip.app.web.data.uploads import MAX_UPLOAD_MB, MAX_UPLOAD_PIXELS, decode_upload
from rsclip.geo.windows import Window
from rsclip.search.query import query, query_text, similar_tiles, tile_vector
from rsclip.app.web.keys import (KEY_BBOX, KEY_FEATURE_GRID, KEY_FEATURE_OVERLAY, KEY_FEATURE_RESULTS,
                                 KEY_FEATURE_UPLOAD, KEY_IMAGE_RESULTS, KEY_IMAGE_UPLOAD, KEY_TEXT_RESULTS, VIEW_FEATURE,
                                 VIEW_IMAGE)
from rsclip.app.server import APP_SCRIPT, WebConfig, app_url, open_instructions, serve, streamlit_command
from rsclip.app.web.layout import DEFAULT_K
from rsclip.app.web.text import describe_window, parse_bbox, readable_error, source_name
from tests.helpers.browser import (UI_TIMEOUT_MS, assert_no_traceback, expected_captions, hit_captions, open_app,
                                   enter_text, search_text, served, wait_captions, wait_idle,
                                   wait_images_loaded, wait_text)
from tests.helpers import BUCKET, GEOTIFF_DIR
from tests.geo.test_formats import RAW_PASSWD, SECRET_MARKERS
from tests.search.test_limits import png_bytes

LANDSAT = GEOTIFF_DIR / "RGB.byte.tif"  # 791x718, 3 x uint8, UTM 18N, nodata 0
FLOAT_SCENE = GEOTIFF_DIR / "cog.tif"  # 343x206, 4 x float64, EPSG:4326
N_CHIPS = 16
# Objects whose names are markdown or HTML (issue 13, item 5): real local chips under these relative paths,
# the only tiles inside HOSTILE_BBOX.
HOSTILE_BBOX = (100.0, 10.0, 101.0, 11.0)
HOSTILE_NAMES = ("![x](https:/host.invalid/p.png).jpg", '<img src="https:/host.invalid/q.png">.jpg',
                 ":red[**bold**]_it_`code`$x^2$[l](https:x).jpg")


# ------------------------------------------------------------------------------------------ fixtures


def _add(rows: dict, uri: str, window, vector, bounds=None, crs=None) -> None:
    for column, value in zip(tiles.WINDOW_COLUMNS, window):
        rows[column].append(int(value))
    rows[tiles.URI].append(uri)
    rows[tiles.VECTOR].append(vector)
    for column, value in zip(tiles.BOUNDS_COLUMNS, bounds or (None,) * 4):
        rows[column].append(value)
    rows[tiles.CRS].append(crs)


@pytest.fixture(scope="module")
def demo(s3, tiny_model, rsicd_files, tmp_path_factory):
    """A real tile table on S3: chips on S3 and local, GeoTIFF windows on S3, a float64 GeoTIFF locally."""
    prefix = f"s3://{BUCKET}/webapp-{uuid.uuid4().hex[:8]}"
    client = s3.client()
    key_of = lambda uri: uri.split(f"s3://{BUCKET}/", 1)[1]
    encoder = load_model(tiny_model)
    rows = {c: [] for c in (tiles.URI, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS, tiles.VECTOR)}

    chips = rsicd_files[:: len(rsicd_files) // 30][:N_CHIPS]  # one scene of each of 16 classes
    chip_uris = []
    for i, path in enumerate(chips):
        uri = str(path)
        if i % 2 == 0:
            uri = f"{prefix}/chips/{path.name}"
            client.upload_file(str(path), BUCKET, key_of(uri))
        chip_uris.append(uri)
    images = [read_image(u) for u in chip_uris]
    for uri, image, vector in zip(chip_uris, images, encoder.encode_images(images)):
        _add(rows, uri, (0, 0, image.shape[1], image.shape[0]), vector)

    landsat_uri = f"{prefix}/scenes/{LANDSAT.name}"
    client.upload_file(str(LANDSAT), BUCKET, key_of(landsat_uri))
    windows = []
    with raster.gdal_env(), rasterio.open(raster.raster_path(landsat_uri)) as src:
        scene = raster.describe_scene(src, raster.RasterOptions())
        for window in grid_windows(src.width, src.height, 224):
            pixels = raster.read_window(src, window, scene)
            if pixels is None:
                continue
            windows.append(window)
            _add(rows, landsat_uri, window, encoder.encode_images([pixels])[0],
                 raster.window_bounds_wgs84(src, window), scene.crs)
        landsat_bbox = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    with rasterio.open(FLOAT_SCENE) as src:
        scene = raster.describe_scene(src, raster.RasterOptions())
        whole = (0, 0, src.width, src.height)
        _add(rows, str(FLOAT_SCENE), whole, encoder.encode_images([raster.read_window(src, whole, scene)])[0],
             raster.window_bounds_wgs84(src, whole), scene.crs)

    hostile_dir, hostile = tmp_path_factory.mktemp("hostile"), []
    for i, name in enumerate(HOSTILE_NAMES):
        path = hostile_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rsicd_files[1 + i], path)  # scenes that are not among the chips above
        hostile.append(str(path))
        lon = HOSTILE_BBOX[0] + 0.2 * i
        _add(rows, str(path), (0, 0, 150, 150), encoder.encode_images([read_image(path)])[0],
             (lon, HOSTILE_BBOX[1], lon + 0.1, HOSTILE_BBOX[1] + 0.1), "EPSG:4326")

    db = f"{prefix}/db"
    table = tiles.create_table(db, tiles.DEFAULT_TABLE, model=str(tiny_model), dim=encoder.dim)
    assert tiles.add_tiles(table, rows) == len(rows[tiles.URI])
    return {
        "db": db, "chips": chip_uris, "local_chips": [u for u in chip_uris if not u.startswith("s3://")],
        "landsat": landsat_uri, "landsat_windows": windows, "landsat_bbox": tuple(landsat_bbox),
        "rows": len(rows[tiles.URI]), "hostile": hostile,
    }


@pytest.fixture(scope="module")
def server(demo):
    """``rsclip serve`` on a free port of 127.0.0.1 (the S3 variables reach it through the environment)."""
    with served(demo["db"]) as web:
        yield web


@pytest.fixture
def page(browser):
    """A fresh browser context; after the test, every request it made must have gone to 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    requests: list[str] = []
    pg.on("request", lambda request: requests.append(request.url))
    try:
        yield pg
    finally:
        context.close()
    hosts = {re.sub(r"^[a-z]+://([^/]+).*$", r"\1", url) for url in requests if not url.startswith(("data:", "blob:"))}
    foreign = sorted(h for h in hosts if not h.startswith("127.0.0.1:"))
    assert requests and not foreign, f"the page reached beyond the local app: {foreign}"


# ------------------------------------------------------------------------------------------ helpers


# ------------------------------------------------------------------------------------------ building blocks


def test_preview_cuts_the_tile_window_from_chips_and_s3_geotiffs(demo):
    local_chip = demo["local_chips"][0]
    image = read_image(local_chip)
    crop = read_preview(local_chip, Window(10, 20, 64, 48))
    np.testing.assert_array_equal(crop, image[20:68, 10:74])

    s3_chip = demo["chips"][0]
    assert s3_chip.startswith("s3://")
    np.testing.assert_array_equal(read_preview(s3_chip, Window(0, 0, 150, 150)), read_image(s3_chip))

    # A GeoTIFF window read window-only from S3 has the pixels the embedding read (full size: no resampling).
    x, y, w, h = demo["landsat_windows"][5]
    with rasterio.open(LANDSAT) as src:
        expected = raster.read_window(src, (x, y, w, h), raster.describe_scene(src, raster.RasterOptions()))
    np.testing.assert_array_equal(read_preview(demo["landsat"], Window(x, y, w, h), size=224), expected)
    small = read_preview(demo["landsat"], Window(x, y, w, h), size=64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    assert abs(float(small.mean()) - float(expected.mean())) < 8.0

    # Past the right edge of the raster is black; float64 data is stretched to uint8.
    edge = read_preview(LANDSAT, Window(700, 0, 200, 100), size=200)
    assert edge.shape == (100, 200, 3) and not edge[:, 100:].any()
    stretched = read_preview(FLOAT_SCENE, Window(0, 0, 343, 206))
    assert stretched.dtype == np.uint8 and stretched.std() > 10

    with pytest.raises(ValueError, match="missing.jpg"):
        read_preview(f"s3://{BUCKET}/nowhere/missing.jpg", Window(0, 0, 10, 10))


def test_decode_upload_reads_images_and_geotiffs():
    assert decode_upload(LANDSAT.read_bytes(), "scene.tif").shape == (718, 791, 3)
    assert decode_upload(FLOAT_SCENE.read_bytes(), "cog.tif").dtype == np.uint8
    for data, name in ((b"", "a.png"), (b"not an image", "b.jpg"), (b"II*\x00garbage", "c.tif")):
        with pytest.raises(ValueError, match=re.escape(name)):
            decode_upload(data, name)


def test_parse_bbox_accepts_four_numbers_and_nothing_else():
    assert parse_bbox("") is None and parse_bbox("   ") is None
    assert parse_bbox("-78.9, 23.5, -76.5 25.6") == (-78.9, 23.5, -76.5, 25.6)
    for text, message in (
        ("1, 2, 3", "four numbers"),
        ("0, 0, 1, 1) OR (1 = 1", "four numbers"),
        ("0, 0, 1, x", "must be numbers"),
        ("0, 0, nan, 1", "finite"),
        ("10, 0, 5, 1", "inverted"),
        ("0, 0, 200, 1", "outside"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_bbox(text)


def test_similar_tiles_by_stored_vector_leave_the_tile_out(demo):
    everything = query(demo["db"], "a harbour", k=demo["rows"])
    first = everything.iloc[0]
    hits = similar_tiles(demo["db"], first[tiles.ID], DEFAULT_K, table=tiles.DEFAULT_TABLE)
    assert len(hits) == DEFAULT_K and first[tiles.ID] not in set(hits[tiles.ID])
    assert hits["score"].is_monotonic_decreasing
    table = tiles.open_table(demo["db"])
    for bad in ("' OR '1'='1", first[tiles.ID][:-1], first[tiles.ID].upper()):
        with pytest.raises(ValueError, match="not a tile id"):
            tile_vector(table, bad)


def test_find_feature_cuts_square_patches_and_draws_the_overlay(tiny_model, rsicd_files):
    data = rsicd_files[0].read_bytes()  # a 150 x 150 JPEG
    match = find_feature(data, rsicd_files[0].name, "runway", model=str(tiny_model), tile=64)
    patches = match.patches
    assert len(patches) == 9 and abs(patches["probability"].sum() - 1.0) < 1e-6
    assert set(patches[tiles.X]) == {0, 64, 86} and set(patches[tiles.WIDTH]) == {64}  # last one moved back
    assert match.probability_grid().shape == (3, 3)
    with Image.open(io.BytesIO(match.overlay_png)) as overlay:
        assert overlay.size == (150, 150)
    best = patches.iloc[0]
    x, y = int(best[tiles.X]), int(best[tiles.Y])
    np.testing.assert_array_equal(match.patch_pixels(best), read_image(rsicd_files[0])[y : y + 64, x : x + 64])
    with pytest.raises(ValueError, match="non-empty text"):
        find_feature(data, rsicd_files[0].name, "  ", model=str(tiny_model), grid=(2, 2))


def test_readable_error_is_one_short_line():
    lance_dump = OSError(
        "Failed to connect: IO { source: Generic { store: \"S3\", source: RetryError { inner: Http { kind: "
        "Connect, source: ConnectError(\"tcp connect error\", 127.0.0.1:9, Os { code: 111, kind: "
        "ConnectionRefused }) } } }, location: object_store.rs:1506\nbacktrace: ..."
    )
    assert readable_error(lance_dump).startswith("cannot reach the object store")
    assert readable_error(ValueError("unknown table 'x' in db\nmore")) == "unknown table 'x' in db"
    long = readable_error(RuntimeError("y" * 1000))
    assert long.startswith("RuntimeError: yyy") and len(long) <= 320


def test_serve_binds_loopback_and_keeps_the_browser_offline():
    cmd = streamlit_command(WebConfig(db="s3://b/db"), "127.0.0.1", 8501)
    for flag in ("--server.address=127.0.0.1", "--browser.gatherUsageStats=false", "--server.headless=true",
                 "--client.showErrorDetails=none"):
        assert flag in cmd
    assert cmd[-4:] == ["--db", "s3://b/db", "--table", "tiles"]
    assert app_url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    with pytest.raises(ValueError, match="port"):
        serve("db", port=70000, block=False)
    hint = open_instructions("s3://b/my db", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, program=".venv/bin/rsclip")
    assert hint.splitlines() == [
        "Web demo: run",
        "  AWS_ENDPOINT_URL=http://127.0.0.1:9000 .venv/bin/rsclip serve 's3://b/my db'",
        "then open http://127.0.0.1:8501/ in a browser.",
    ]
    assert "--table naip --port 8600" in open_instructions("db", table="naip", port=8600)


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


def test_server_listens_on_loopback_only(server):
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing on 0.0.0.0 or ::


# ------------------------------------------------------------------------------------------ in the browser


def test_text_search_shows_the_ranked_thumbnails(server, demo, page, tmp_path):
    open_app(page, server.url)
    search_text(page, "an airport with runways")
    results = f".st-key-{KEY_TEXT_RESULTS}"
    expected = query(demo["db"], "an airport with runways", k=DEFAULT_K)
    wait_captions(page, KEY_TEXT_RESULTS, expected)
    page.screenshot(path=str(tmp_path / "text_search.png"), full_page=True)
    text = page.locator(results).inner_text()
    assert text.count("score") == DEFAULT_K
    assert f"{expected['score'].iloc[0]:.3f}" in text
    # which path answered: Lance while the table loads into memory in the background, then the resident copy
    first = page.get_by_text("Searched:").first.inner_text(timeout=UI_TIMEOUT_MS)
    assert first == "Searched: resident (memory)" or "loading into memory" in first, first
    for attempt in range(60):  # each turn a search of its own: the load is over when one answers from memory
        if page.get_by_text("Searched: resident (memory)").count():
            break
        search_text(page, ("an airport", "an airport with runways")[attempt % 2])
        wait_idle(page, start_ms=0)
    assert page.get_by_text("Searched: resident (memory)").count() == 1
    assert_no_traceback(page)


def test_bounding_box_keeps_only_tiles_inside(server, demo, page, tmp_path):
    open_app(page, server.url)
    lon_min, lat_min, lon_max, lat_max = demo["landsat_bbox"]
    bbox_box = page.locator(f".st-key-{KEY_BBOX} input")
    typed = [float(f"{v:.5f}") for v in (lon_min, lat_min, lon_max, lat_max)]
    enter_text(page, bbox_box, ", ".join(f"{v:.5f}" for v in typed))
    page.get_by_text("searching inside").wait_for(timeout=UI_TIMEOUT_MS)
    search_text(page, "sea and clouds")
    n = min(DEFAULT_K, len(demo["landsat_windows"]))
    wait_captions(page, KEY_TEXT_RESULTS, query(demo["db"], "sea and clouds", k=DEFAULT_K, bbox=tuple(typed)))
    page.screenshot(path=str(tmp_path / "text_search_bbox.png"), full_page=True)
    captions = hit_captions(page, KEY_TEXT_RESULTS)
    assert len(captions) == n and all(c.startswith(LANDSAT.name) for c in captions)
    assert "lon " in page.locator(f".st-key-{KEY_TEXT_RESULTS}").inner_text()

    for bad, message in (("1, 2, 3", "four numbers"), ("0, 0, 1, 1) OR (1=1", "four numbers"),
                         ("10, 0, 5, 1", "inverted")):
        enter_text(page, bbox_box, bad)
        page.get_by_text(message).first.wait_for(timeout=UI_TIMEOUT_MS)
        page.locator(f".st-key-{KEY_TEXT_RESULTS}").wait_for(state="detached", timeout=UI_TIMEOUT_MS)
    assert_no_traceback(page)


def test_upload_an_image_to_find_similar_tiles(server, demo, page, rsicd_files, tmp_path):
    open_app(page, server.url)
    page.get_by_role("tab", name=VIEW_IMAGE).click()
    upload = rsicd_files[3]  # a real scene that is not in the table
    page.locator(f".st-key-{KEY_IMAGE_UPLOAD} input[type=file]").set_input_files(str(upload))
    expected = query(demo["db"], read_image(upload), k=DEFAULT_K)
    wait_captions(page, KEY_IMAGE_RESULTS, expected)
    page.screenshot(path=str(tmp_path / "image_search_upload.png"), full_page=True)
    assert upload.name in page.locator("body").inner_text()

    # A broken upload is a readable message, not a stack trace.
    page.locator(f".st-key-{KEY_IMAGE_UPLOAD} input[type=file]").set_input_files(
        files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"this is not a jpeg"}]
    )
    page.get_by_text("broken.jpg: not a readable image").wait_for(timeout=UI_TIMEOUT_MS)
    assert_no_traceback(page)


def test_click_a_result_to_find_similar_tiles(server, demo, page, tmp_path):
    open_app(page, server.url)
    search_text(page, "a dense residential area")
    wait_images_loaded(page, f".st-key-{KEY_TEXT_RESULTS}", DEFAULT_K)
    chosen = query(demo["db"], "a dense residential area", k=DEFAULT_K).iloc[2]
    page.locator(f".st-key-{KEY_TEXT_RESULTS}-hit-3").get_by_role("button", name="Similar tiles").click()

    page.get_by_text("Tiles similar to").wait_for(timeout=UI_TIMEOUT_MS)
    page.get_by_role("tab", name=VIEW_IMAGE, selected=True).wait_for(timeout=UI_TIMEOUT_MS)
    expected = similar_tiles(demo["db"], chosen[tiles.ID], DEFAULT_K, table=tiles.DEFAULT_TABLE)
    wait_captions(page, KEY_IMAGE_RESULTS, expected)
    page.screenshot(path=str(tmp_path / "image_search_similar.png"), full_page=True)
    captions = hit_captions(page, KEY_IMAGE_RESULTS)
    assert f"{source_name(chosen[tiles.URI])} · {describe_window(chosen)}" not in captions
    assert_no_traceback(page)


def test_feature_finder_shows_the_patch_grid_and_heatmap(server, demo, page, tmp_path, tiny_model):
    from rsclip.search.locate import locate

    open_app(page, server.url)
    page.get_by_role("tab", name=VIEW_FEATURE).click()
    scene = GEOTIFF_DIR / "m_4709963_se_14_1_20200831.tif"  # NAIP, 4 bands, georeferenced
    page.locator(f".st-key-{KEY_FEATURE_UPLOAD} input[type=file]").set_input_files(str(scene))
    wait_idle(page)
    feature = page.get_by_label("Feature to find")
    enter_text(page, feature, "a lake")
    wait_images_loaded(page, f".st-key-{KEY_FEATURE_GRID}", 9)  # the default 3 x 3 grid
    wait_images_loaded(page, f".st-key-{KEY_FEATURE_OVERLAY}", 1)
    page.screenshot(path=str(tmp_path / "feature_finder.png"), full_page=True)
    page.locator(f".st-key-{KEY_FEATURE_GRID}").screenshot(path=str(tmp_path / "feature_finder_grid.png"))

    expected = locate(str(scene), "a lake", model=str(tiny_model), grid=(3, 3))
    best = expected.iloc[0]
    wait_text(page, page.locator(f".st-key-{KEY_FEATURE_RESULTS}"), contains=(
        f"best: row {int(best['row'])}, column {int(best['col'])}", f"probability {best['probability']:.3f}",
        f"lon {best['lon_min']:.4f}"))  # a GeoTIFF upload keeps its georeference
    cells = page.locator(f".st-key-{KEY_FEATURE_GRID}").inner_text()
    assert len(re.findall(r"p=0\.\d{3}", cells)) == 9
    overlay = page.locator(f".st-key-{KEY_FEATURE_OVERLAY} img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert overlay == [934, 723]

    # Another grid re-scores; a grid finer than the image is a readable message.
    enter_text(page, page.get_by_label("Rows"), "5")
    wait_images_loaded(page, f".st-key-{KEY_FEATURE_GRID}", 5 * 3)
    tiny = io.BytesIO()
    Image.fromarray(np.full((4, 6, 3), 90, dtype=np.uint8)).save(tiny, format="PNG")
    page.locator(f".st-key-{KEY_FEATURE_UPLOAD} input[type=file]").set_input_files(
        files=[{"name": "tiny.png", "mimeType": "image/png", "buffer": tiny.getvalue()}]
    )
    page.get_by_text("is finer than the 6x4 pixel image").wait_for(timeout=UI_TIMEOUT_MS)
    assert_no_traceback(page)


# ------------------------------------------------------------------------------------------ issue 13 in the browser


def test_object_names_are_shown_as_plain_text(server, demo, page, tmp_path):
    """Names that are markdown or HTML render as the characters they are: no image fetched (the page fixture
    records every request), no link, no markup, in the hit cards and in the "Tiles similar to" caption."""
    open_app(page, server.url)
    bbox_box = page.locator(f".st-key-{KEY_BBOX} input")
    enter_text(page, bbox_box, ", ".join(str(v) for v in HOSTILE_BBOX))
    page.get_by_text("searching inside").wait_for(timeout=UI_TIMEOUT_MS)
    search_text(page, "anything at all")
    results, n = f".st-key-{KEY_TEXT_RESULTS}", len(HOSTILE_NAMES)
    expected = query(demo["db"], "anything at all", k=DEFAULT_K, bbox=HOSTILE_BBOX)
    assert sorted(expected[tiles.URI]) == sorted(demo["hostile"])
    wait_captions(page, KEY_TEXT_RESULTS, expected)
    text = page.locator(results).inner_text()
    for uri in demo["hostile"]:
        assert source_name(uri) in text
    assert page.locator(f"{results} a").count() == 0  # no link made of a name
    assert page.locator(f"{results} img").count() == n  # the previews, nothing else
    assert page.locator("img[src*='host.invalid'], img[alt='x'], .katex").count() == 0

    page.locator(f"{results}-hit-1").get_by_role("button", name="Similar tiles").click()
    page.get_by_text("Tiles similar to").wait_for(timeout=UI_TIMEOUT_MS)
    wait_images_loaded(page, f".st-key-{KEY_IMAGE_RESULTS}", n - 1)
    page.get_by_text(expected[tiles.URI].iloc[0], exact=False).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "hostile_names.png"), full_page=True)
    assert page.locator("img[src*='host.invalid'], img[alt='x']").count() == 0
    assert_no_traceback(page)


def test_typed_text_is_text_and_nothing_is_read(server, demo, page, tmp_path, rsicd_files):
    """What a visitor types is encoded as text: the hits are the text query's; a FIFO, an image on disk and an
    object on S3 named in the box are never opened (an opened FIFO would hang the search)."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    probe = tmp_path / "probe.jpg"
    shutil.copyfile(rsicd_files[3], probe)
    typed = ["file:///dev/zero", "file:///root/.aws/credentials", "/etc/passwd", "../../x.png",
             demo["chips"][0], f"file://{fifo}", str(probe)]
    for text in typed:
        open_app(page, server.url)
        search_text(page, text)
        wait_captions(page, KEY_TEXT_RESULTS, query_text(demo["db"], text, DEFAULT_K))
        assert_no_traceback(page)
    as_image = query(demo["db"], str(probe), k=DEFAULT_K)  # what reading the typed path would have given
    assert expected_captions(as_image) != expected_captions(query_text(demo["db"], str(probe), DEFAULT_K))
    with pytest.raises(OSError) as info:  # no reader ever opened the FIFO
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert info.value.errno == errno.ENXIO


def upload(page, key: str, name: str, data: bytes, mime: str = "image/png") -> None:
    page.locator(f".st-key-{key} input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_disguised_and_oversized_uploads_are_refused_and_others_still_served(server, demo, page, browser):
    """A VRT named .tif (its raw band is /etc/passwd), a 9,400 x 9,400 PNG of ~300 KB and a file over the
    upload cap are each refused with a message naming the problem, in both upload views; another visitor's
    session is served meanwhile."""
    bomb = png_bytes(9400, 9400)
    open_app(page, server.url)
    page.get_by_role("tab", name=VIEW_IMAGE).click()
    upload(page, KEY_IMAGE_UPLOAD, "x.tif", RAW_PASSWD, "image/tiff")
    page.get_by_text("x.tif: not a readable raster").wait_for(timeout=UI_TIMEOUT_MS)
    upload(page, KEY_IMAGE_UPLOAD, "bomb.png", bomb)
    page.get_by_text(f"bomb.png: 9400x9400 pixels exceeds the decode limit of {MAX_UPLOAD_PIXELS}").wait_for(
        timeout=UI_TIMEOUT_MS)
    upload(page, KEY_IMAGE_UPLOAD, "huge.png", b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))
    too_large = page.get_by_text("File must be").first  # Streamlit's own check of server.maxUploadSize
    too_large.wait_for(timeout=UI_TIMEOUT_MS)
    assert str(MAX_UPLOAD_MB) in too_large.inner_text()

    page.get_by_role("tab", name=VIEW_FEATURE).click()
    feature = page.get_by_label("Feature to find")
    enter_text(page, feature, "storage tanks")
    upload(page, KEY_FEATURE_UPLOAD, "y.tif", RAW_PASSWD, "image/tiff")
    page.get_by_text("y.tif: not a readable raster").wait_for(timeout=UI_TIMEOUT_MS)
    upload(page, KEY_FEATURE_UPLOAD, "bomb2.png", bomb)
    page.get_by_text("bomb2.png: 9400x9400 pixels exceeds the decode limit").wait_for(timeout=UI_TIMEOUT_MS)
    body = page.locator("body").inner_text()
    assert not any(marker in body for marker in SECRET_MARKERS)
    assert_no_traceback(page)

    other = browser.new_context().new_page()
    try:
        open_app(other, server.url)
        search_text(other, "a river")
        wait_images_loaded(other, f".st-key-{KEY_TEXT_RESULTS}", DEFAULT_K)
    finally:
        other.context.close()


def _websocket_status(url: str, host: str) -> int:
    """The HTTP status of a WebSocket upgrade to the app's stream sent with ``Host: host``."""
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/_stcore/stream", headers={
            "Host": host, "Origin": f"http://{host}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_rebound_host_name_cannot_open_the_app_stream(server):
    """DNS rebinding: a page of another site whose name now resolves to 127.0.0.1 is refused the WebSocket."""
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    assert _websocket_status(server.url, f"127.0.0.1:{port}") == 101
    assert _websocket_status(server.url, f"rebound.example:{port}") != 101


def run_page(monkeypatch, db: str, table: str = tiles.DEFAULT_TABLE):
    """Run the page script once in-process (Streamlit's AppTest: the real script runner, no browser)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr("sys.argv", [str(APP_SCRIPT), "--db", db, "--table", table])
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=UI_TIMEOUT_MS / 1000)
    app.run()
    assert not app.exception, [e.value for e in app.exception]  # no uncaught error, so no stack trace
    return app


def shown(markdown: str) -> str:
    """What a browser shows of markdown whose punctuation is all escaped (server.escape_markdown)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def test_unknown_table_is_a_readable_message(demo, monkeypatch):
    app = run_page(monkeypatch, demo["db"], "no_such_table")
    assert [shown(e.value) for e in app.error] == [
        "Cannot open table 'no_such_table': unknown table 'no_such_table' in the database (tables: tiles)"
    ]
    assert str(demo["db"]) not in str(app.error)  # no server path reaches the visitor
    assert not app.tabs  # nothing else is drawn


def test_unreachable_store_is_a_readable_message(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    db = f"s3://{BUCKET}/unreachable-{uuid.uuid4().hex[:8]}/db"
    app = run_page(monkeypatch, db)
    assert [shown(e.value) for e in app.error] == [
        "Cannot open table 'tiles': cannot reach the object store (check AWS_ENDPOINT_URL and that "
        "the server is up)"
    ]
