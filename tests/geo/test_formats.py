"""Issue 13, item 1: rasters and images are opened only as the format their name claims.

A catalogue of disguised files (GDAL VRTs whose raw band or source names /etc/passwd, another raster or a URL;
ENVI and EHdr header-plus-raw pairs; VRTs named .jp2; EPS, SVG and VRT text named .png/.jpg) and of names GDAL
or rasterio would follow (/vsicurl/, /vsizip/, https://, zip://) goes through every entry point that opens
an image: the web app's upload decoding and feature finder, ``rsclip.locate`` from Python and from the
command line, a path query, and the embedding job's planning and reading stages (called directly, without
Ray). Each must refuse with a message naming the file, and nothing of /etc/passwd may reach pixels or
messages. (The same uploads in the browser: tests/browser/test_webapp.py.)
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

import rsclip
from rsclip.app.cli import main
from rsclip.app.web.data.finder import find_feature
from rsclip.app.web.data.uploads import decode_upload
from rsclip.geo import raster
from rsclip.geo.images import read_image
from rsclip.model.clip import load_model
from rsclip.model.preprocess import ImagePreprocess
from rsclip.errors import InvalidInput
from rsclip.ingest.batch import ERROR, PLAN_COLUMNS, READY, STATUS, STAGE, MESSAGE, rows_to_batch
from rsclip.ingest.planning import plan_file
from rsclip.ingest.reading import read_tiles
from tests.helpers import GEOTIFF_DIR

PASSWD = Path("/etc/passwd")
SECRET_MARKERS = ("root:", "/bin/", "nologin")  # what /etc/passwd holds and no message may show
LANDSAT = GEOTIFF_DIR / "RGB.byte.tif"


def vrt(band: str, width: int = 64, height: int = 16) -> bytes:
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{band}</VRTDataset>').encode()


RAW_PASSWD = vrt(
    '<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
    f'<SourceFilename relativetoVRT="0">{PASSWD}</SourceFilename><ImageOffset>0</ImageOffset>'
    "<PixelOffset>1</PixelOffset><LineOffset>64</LineOffset></VRTRasterBand>")
SOURCE_RASTER = vrt(
    '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
    f'<SourceFilename relativeToVRT="0">{LANDSAT}</SourceFilename><SourceBand>1</SourceBand>'
    "</SimpleSource></VRTRasterBand>", 791, 718)
SOURCE_URL = vrt(
    '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
    '<SourceFilename relativeToVRT="0">/vsicurl/http://127.0.0.1:9/x.tif</SourceFilename>'
    "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>")
ENVI_HEADER = b"ENVI\nsamples = 64\nlines = 16\nbands = 1\nheader offset = 0\ndata type = 1\ninterleave = bsq\n"
EHDR_HEADER = b"NROWS 16\nNCOLS 64\nNBANDS 1\nNBITS 8\nBYTEORDER I\nLAYOUT BIL\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n(/etc/passwd) (r) file\nshowpage\n"
SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="64" '
       b'height="64"><image xlink:href="file:///etc/passwd" width="64" height="64"/></svg>')

# (file name, bytes, {sidecar name: bytes}): what a hostile upload or archive object can be.
DISGUISED = [
    ("vrt-raw.tif", RAW_PASSWD, {}),
    ("vrt-raw.tiff", RAW_PASSWD, {}),
    ("vrt-raw.jp2", RAW_PASSWD, {}),
    ("vrt-source.tif", SOURCE_RASTER, {}),
    ("vrt-url.tif", SOURCE_URL, {}),
    ("envi.tif", PASSWD.read_bytes()[:1024], {"envi.hdr": ENVI_HEADER}),
    ("envi-header.tif", ENVI_HEADER, {"envi-header": PASSWD.read_bytes()[:1024]}),
    ("ehdr.tif", PASSWD.read_bytes()[:1024], {"ehdr.hdr": EHDR_HEADER}),
    ("eps.png", EPS, {}),
    ("svg.png", SVG, {}),
    ("svg.jpg", SVG, {}),
    ("vrt.png", RAW_PASSWD, {}),
    ("vrt.jpg", RAW_PASSWD, {}),
]
# Names that GDAL or rasterio would follow to another file, an archive or the network.
FOLLOWED_NAMES = [
    "/vsicurl/http://127.0.0.1:9/x.tif",
    "/vsizip//tmp/archive.zip/x.tif",
    "/vsimem/x.tif",
    "https://127.0.0.1:9/x.tif",
    "http://169.254.169.254/latest/x.tif",
    "zip:///tmp/archive.zip!/x.tif",
    "gs://bucket/x.tif",
]
IDS = [name for name, _, _ in DISGUISED]


@pytest.fixture(scope="module")
def disguised(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("disguised")
    for name, data, sidecars in DISGUISED:
        (folder / name).write_bytes(data)
        for side, content in sidecars.items():
            (folder / side).write_bytes(content)
    return folder


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return load_model(tiny_model)


def assert_refused(exc: BaseException, name: str) -> None:
    text = str(exc)
    assert isinstance(exc, InvalidInput), f"{type(exc).__name__}: {text}"
    assert name in text, text
    assert "\n" not in text and not any(marker in text for marker in SECRET_MARKERS), text


def test_gdal_options_follow_the_security_guidance():
    opts = rsclip.runtime.storage.gdal_options()
    assert opts["GDAL_VRT_ENABLE_RAWRASTERBAND"] == "NO" and opts["GDAL_VRT_ENABLE_PYTHON"] == "NO"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR" and opts["GDAL_PAM_ENABLED"] == "NO"
    assert opts["PROJ_NETWORK"] == "OFF"
    assert raster.ALLOWED_DRIVERS == {"GTiff", "JP2OpenJPEG"}
    assert {raster.driver_for(f"x{s}") for s in raster.RASTER_SUFFIXES} == raster.ALLOWED_DRIVERS


@pytest.mark.parametrize("name, data, sidecars", DISGUISED, ids=IDS)
def test_uploads_are_refused(name, data, sidecars):
    with pytest.raises(InvalidInput) as info:
        decode_upload(data, name)
    assert_refused(info.value, name)


@pytest.mark.parametrize("name", ["x.vrt", "x.hdr", "x.eps", "x.svg", "x.jp2", "x", "x.tif.vrt"])
def test_uploads_named_as_other_formats_are_refused_before_decoding(name):
    with pytest.raises(InvalidInput, match="not an image type the app opens"):
        decode_upload(LANDSAT.read_bytes(), name)


@pytest.mark.parametrize("name", FOLLOWED_NAMES)
def test_upload_names_are_only_names(name):
    """An upload's name picks the format; its bytes are what is opened, never what the name points at."""
    assert decode_upload(LANDSAT.read_bytes(), name).shape == (718, 791, 3)
    with pytest.raises(InvalidInput) as info:
        decode_upload(RAW_PASSWD, name)
    assert_refused(info.value, name)


def test_a_png_named_jpg_is_refused_and_decodes_named_png(rsicd_files):
    """One format per name (issue 24): the name picks the decoder, the bytes never pick another."""
    buf = io.BytesIO()
    Image.open(rsicd_files[0]).save(buf, format="PNG")
    with pytest.raises(InvalidInput, match=r"really-a-png\.jpg: not a readable image as JPEG, the format its name"):
        decode_upload(buf.getvalue(), "really-a-png.jpg")
    np.testing.assert_array_equal(decode_upload(buf.getvalue(), "a.png"), read_image(rsicd_files[0]))


@pytest.mark.parametrize("name", ["vrt-raw.tif", "vrt-source.tif", "envi.tif", "svg.png", "eps.png"])
def test_feature_finder_refuses(tiny_model, name):
    data = dict((n, d) for n, d, _ in DISGUISED)[name]
    with pytest.raises(InvalidInput) as info:
        find_feature(data, name, "storage tanks", model=str(tiny_model), grid=(2, 2))
    assert_refused(info.value, name)


@pytest.mark.parametrize("name", IDS)
def test_locate_and_path_queries_refuse_files(encoder, disguised, tmp_path, name):
    path = disguised / name
    with pytest.raises(InvalidInput) as info:
        rsclip.locate(path, "storage tanks", model=encoder, grid=(2, 2))
    assert_refused(info.value, name)
    with pytest.raises(InvalidInput) as info:
        rsclip.locate(LANDSAT, str(path), model=encoder, grid=(2, 2))  # an example image that is no image
    assert_refused(info.value, name)
    with pytest.raises(InvalidInput) as info:
        read_image(path)
    assert_refused(info.value, name)


@pytest.mark.parametrize("name", FOLLOWED_NAMES)
def test_locate_refuses_names_gdal_would_follow(encoder, name):
    with pytest.raises(InvalidInput) as info:
        rsclip.locate(name, "storage tanks", model=encoder, grid=(2, 2))
    text = str(info.value)
    # http(s) rasters are read through /vsicurl/ (issue 17), never from metadata, loopback or private hosts
    assert name in text and ("/vsi" in text and "not opened" in text or "URIs only" in text
                             or "addresses are never read" in text), text


@pytest.mark.parametrize("name", ["vrt-raw.tif", "vrt-raw.jp2", "ehdr.tif", "svg.png", "vrt.jpg"])
def test_cli_locate_refuses_in_one_line(tiny_model, disguised, capsys, name):
    code = main(["locate", str(disguised / name), "storage tanks", "--model", str(tiny_model)])
    out, err = capsys.readouterr()
    assert code == 2 and not out and err.startswith("rsclip: error: ") and len(err.strip().splitlines()) == 1
    assert name in err and not any(marker in err for marker in SECRET_MARKERS)


@pytest.mark.parametrize("name", IDS)
def test_planning_records_an_error_row(disguised, name):
    path = disguised / name
    rows = plan_file(str(path), path.stat().st_size, raster.RasterOptions())
    assert len(rows) == 1 and rows[0][STATUS] == ERROR and rows[0][STAGE] == "plan"
    assert name in rows[0][MESSAGE] and not any(m in rows[0][MESSAGE] for m in SECRET_MARKERS)


def test_reading_records_an_error_row_for_objects_rewritten_after_planning(tmp_path, rsicd_files):
    """A raster and a chip planned as real images, then replaced by disguised files before reading."""
    scene, chip = tmp_path / "scene.tif", tmp_path / "chip.jpg"
    scene.write_bytes(LANDSAT.read_bytes())
    chip.write_bytes(rsicd_files[0].read_bytes())
    options = raster.RasterOptions(tile_size=256, max_chip=512)
    rows = plan_file(str(scene), scene.stat().st_size, options)
    big_chip = plan_file(str(chip), chip.stat().st_size, raster.RasterOptions(max_chip=64, tile_size=64))
    assert {r[STATUS] for r in rows + big_chip} == {"todo"} and len(rows) > 1
    prep = asdict(ImagePreprocess())
    ok = read_tiles(rows_to_batch(rows[:1], PLAN_COLUMNS), prep)
    assert list(ok[STATUS]) == [READY]

    scene.write_bytes(RAW_PASSWD)
    for row in big_chip:
        row["data"] = SVG  # what planning carried forward is no image either
    read = read_tiles(rows_to_batch(rows + big_chip, PLAN_COLUMNS), prep)
    assert set(read[STATUS]) == {ERROR} and set(read[STAGE]) == {"read"}
    for message in read[MESSAGE]:
        assert ("scene.tif" in message or "chip.jpg" in message) and not any(m in message for m in SECRET_MARKERS)
    assert all(len(p) == 0 for p in read["pixels"])


def test_a_vrt_named_tif_opened_by_gdal_itself_would_leak(tmp_path):
    """The attack is real: GDAL guessing the driver reads /etc/passwd as pixels (the test can fail)."""
    path = tmp_path / "x.tif"
    path.write_bytes(RAW_PASSWD)
    with rasterio.Env(GDAL_VRT_ENABLE_RAWRASTERBAND="YES"), rasterio.open(path) as src:
        assert src.driver == "VRT"
        leaked = src.read(1).tobytes()
    assert leaked.startswith(PASSWD.read_bytes()[:16])
    with pytest.raises(InvalidInput):
        with raster.open_raster(str(path)):
            pass



@pytest.mark.parametrize("url", ["http://localhost:8080/x.tif", "http://127.0.0.1/x.tif", "https://10.1.2.3/x.tif",
                                 "http://[::1]/x.tif", "http://169.254.169.254/x.tif", "http://0.0.0.0/x.tif",
                                 "http://metadata.google.internal/x.tif"])
def test_http_rasters_never_come_from_metadata_loopback_or_private_hosts(url, monkeypatch):
    """A table's or catalog's uri is hostile: names that resolve to such addresses are refused before GDAL
    sees them; an operator may allow loopback and private networks, never link-local or metadata hosts."""
    monkeypatch.delenv(rsclip.runtime.storage.ALLOW_PRIVATE_HTTP, raising=False)
    with pytest.raises(InvalidInput, match="addresses are never read"):
        rsclip.runtime.storage.gdal_path(url)
    monkeypatch.setenv(rsclip.runtime.storage.ALLOW_PRIVATE_HTTP, "1")
    if any(h in url for h in ("169.254", "0.0.0.0", "metadata")):
        with pytest.raises(InvalidInput, match="addresses are never read"):
            rsclip.runtime.storage.gdal_path(url)
    else:
        assert rsclip.runtime.storage.gdal_path(url) == f"/vsicurl/{url}"
