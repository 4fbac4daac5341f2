"""Issue 24, item 1: decoders are bounded by what they would allocate, not only by the declared size, and a name
picks one format everywhere.

Every hostile file here is real and written by the test (rasterio/GDAL, Pillow): a 64x64 GeoTIFF that declares
16384x16384 deflated tiles (an 800 KB file whose one tile is 805 MB), a 4096x4096 float64 GeoTIFF in one strip,
a COG whose overview holds the huge tiles, a 1-bit PNG that inflates 8000:1, rasters whose bands and sample size
push the read past the budget, a PNG named .jpg and a TIFF named .png. Each is refused before decoding with a
message naming the file, and the web app's process does not grow (measured in a child process); the real
GeoTIFFs and RSICD JPEGs still decode.
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from rsclip.app.web.data.uploads import decode_upload
from rsclip.errors import InvalidInput, LimitExceeded, UnsafeInput
from rsclip.geo import formats, images, raster
from rsclip.ingest.batch import ERROR, MESSAGE, STATUS
from rsclip.ingest.planning import plan_file
from tests.helpers import GEOTIFF_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]

BLOCK_RULE = re.escape("a tile or strip may (decompression bomb refused)")


def write_tiff(path, width, height, count, dtype, compress="deflate", **layout) -> bytes:
    """A GeoTIFF of zeros written block by block with the given tiling or strips; its bytes."""
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, compress=compress,
                   crs="EPSG:32618", transform=rasterio.transform.from_origin(500000, 4000000, 1, 1))
    with rasterio.open(path, "w", **profile, **layout) as dst:
        for _, window in dst.block_windows(1):
            dst.write(np.zeros((count, window.height, window.width), dtype), window=window)
    return path.read_bytes()


@functools.lru_cache(maxsize=None)
def deflated_zeros(size: int) -> bytes:
    """``size`` zero bytes deflated (zlib), compressed 16 MB at a time: the test never holds the block."""
    packer, chunk, left, out = zlib.compressobj(6), bytes(1 << 24), size, []
    while left:
        out.append(packer.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    return b"".join(out) + packer.flush()


def crafted_tiff(*ifds: dict) -> bytes:
    """A little-endian deflate TIFF written by hand, one IFD per dict (``width``, ``height``, ``samples``,
    ``bits``, ``float``, ``tile`` (w, h) or ``rows`` per strip, ``overview``): every block of an IFD points
    at the same deflated block of zeros, as a bomb may, so a file of a few hundred KB declares GBs."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    link = 4  # where the offset of the next IFD goes
    for ifd in ifds:
        w, h, spp, bits = ifd["width"], ifd["height"], ifd["samples"], ifd["bits"]
        bw, bh = ifd.get("tile") or (w, ifd["rows"])
        count = math.ceil(w / bw) * math.ceil(h / bh) if "tile" in ifd else math.ceil(h / bh)
        data_at = len(out)
        out += deflated_zeros(bw * bh * spp * bits // 8)
        size = len(out) - data_at

        def array(values, kind):
            fmt = {3: "H", 4: "I"}[kind]
            packed = struct.pack(f"<{len(values)}{fmt}", *values)
            if len(packed) <= 4:
                return kind, len(values), packed.ljust(4, b"\x00")
            out.extend(packed + b"\x00" * (len(packed) % 2))
            return kind, len(values), struct.pack("<I", len(out) - len(packed) - len(packed) % 2)

        tiled = "tile" in ifd
        tags = {254: array([1 if ifd.get("overview") else 0], 4), 256: array([w], 4), 257: array([h], 4),
                258: array([bits] * spp, 3), 259: array([8], 3), 262: array([2 if spp == 3 else 1], 3),
                277: array([spp], 3), 284: array([1], 3), 339: array([3 if ifd.get("float") else 1] * spp, 3),
                (324 if tiled else 273): array([data_at] * count, 4), (325 if tiled else 279): array([size] * count, 4)}
        tags.update({322: array([bw], 4), 323: array([bh], 4)} if tiled else {278: array([bh], 4)})
        if spp not in (1, 3):
            tags[338] = array([0] * (spp - 1), 3)
        out += b"\x00" * (len(out) % 2)
        struct.pack_into("<I", out, link, len(out))
        out += struct.pack("<H", len(tags))
        for tag in sorted(tags):
            kind, n, value = tags[tag]
            out += struct.pack("<HHI", tag, kind, n) + value
        link = len(out)
        out += b"\x00" * 4
    return bytes(out)


@pytest.fixture(scope="module")
def bombs():
    return {
        # 64x64 pixels, one 16384x16384 RGB tile: 805 MB decoded from a file under 1 MB
        "tile": crafted_tiff(dict(width=64, height=64, samples=3, bits=8, tile=(16384, 16384))),
        # 16.7 Mpx (within the upload's 36 Mpx), one strip of 4 float64 bands: 537 MB
        "strip": crafted_tiff(dict(width=4096, height=4096, samples=4, bits=64, float=True, rows=4096)),
        # a COG-like file with 256-pixel tiles whose overview has 4096x4096 tiles of 4 float64 bands
        "overview": crafted_tiff(
            dict(width=1024, height=1024, samples=4, bits=64, float=True, tile=(256, 256)),
            dict(width=512, height=512, samples=4, bits=64, float=True, tile=(4096, 4096), overview=True)),
    }


@pytest.mark.parametrize("kind", ["tile", "strip", "overview"])
def test_tiny_rasters_with_huge_blocks_are_refused_before_decoding(bombs, tmp_path, kind):
    data = bombs[kind]
    assert len(data) < 1_000_000  # small files: the declared size is no guide
    with pytest.raises(LimitExceeded, match=f"bomb-{kind}.tif: one .* decodes to .*{BLOCK_RULE}") as info:
        decode_upload(data, f"bomb-{kind}.tif")
    assert ("overview" in str(info.value)) == (kind == "overview")
    path = tmp_path / f"bomb-{kind}.tif"
    path.write_bytes(data)
    with pytest.raises(LimitExceeded, match=BLOCK_RULE):  # a path query, rsclip.locate
        images.read_image(path)
    with pytest.raises(LimitExceeded, match=BLOCK_RULE):  # the embedding job's reads and the app's previews
        with raster.open_raster(str(path)):
            pass
    rows = plan_file(str(path), len(data), raster.RasterOptions())
    assert rows[0][STATUS] == ERROR and f"bomb-{kind}.tif" in rows[0][MESSAGE]
    assert re.search(BLOCK_RULE, rows[0][MESSAGE]), rows[0][MESSAGE]


def test_a_tiff_chip_with_a_huge_tile_is_refused_by_pillow_too(bombs):
    """The same file decoded as a chip (a training sample's bytes, a nameless manifest entry) goes through
    Pillow's libtiff, which allocates the whole tile: refused from the tags."""
    for name in ("chip.tif", "<bytes>"):
        with pytest.raises(LimitExceeded, match=f"{name}: one 16384x16384 tile decodes to 805,306,368 bytes"):
            images.decode_image(bombs["tile"], name)
        with pytest.raises(LimitExceeded, match="tile"):
            images.image_size(bombs["tile"], name)  # the embedding job's planning


def test_a_whole_image_strip_of_a_small_image_is_fine(tmp_path):
    data = write_tiff(tmp_path / "one-strip.tif", 512, 384, 3, "uint8", blockysize=384)
    with rasterio.open(tmp_path / "one-strip.tif") as src:
        assert src.block_shapes[0] == (384, 512)
    assert decode_upload(data, "one-strip.tif").shape == (384, 512, 3)


def test_the_upload_process_does_not_grow(bombs, tmp_path):
    """Measured in a child process: its peak resident size stays where it was (an unchecked decode of the
    tile bomb grows it by about 1 GB; the child imports everything before measuring)."""
    path = tmp_path / "bomb.tif"
    path.write_bytes(bombs["tile"])
    script = (
        "import json, resource, sys\n"
        "from rsclip.app.web.data.uploads import decode_upload\n"
        "import rasterio, rasterio.io, rasterio.errors\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "decode_upload(open(sys.argv[2], 'rb').read(), 'warm.tif')\n"  # GDAL's own start-up allocations
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "results = []\n"
        "for name in ('bomb.tif', 'bomb.png', 'bomb'):\n"
        "    try:\n"
        "        decode_upload(data, name) if name.endswith('.tif') else __import__('rsclip.geo.images')"
        ".geo.images.decode_image(data, name)\n"
        "        results.append('decoded')\n"
        "    except Exception as exc:\n"
        "        results.append(type(exc).__name__)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'grown_kb': grown, 'results': results}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path), str(GEOTIFF_DIR / "rgb1.tif")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # .tif and the nameless bytes: the block bound; .png: not a PNG, never handed to the TIFF decoder
    assert report["results"] == ["LimitExceeded", "InvalidInput", "LimitExceeded"], report
    assert report["grown_kb"] < 64 * 1024, report


def test_the_read_is_within_the_decode_budget_bands_and_sample_size_included(tmp_path):
    """100x100 pixels is within a 10,000-pixel limit, but three float64 bands at full size are 240,000 bytes,
    more than the 40,000 the limit allows; read decimated to 30 pixels a side they fit."""
    data = write_tiff(tmp_path / "f64.tif", 100, 100, 3, "float64")
    assert formats.decode_budget(10_000) == 40_000
    with pytest.raises(LimitExceeded, match=r"f64\.tif: decoding it takes 240,000 bytes, more than the decode "
                                            r"budget of 40,000"):
        images.decode_raster(data, "f64.tif", max_pixels=10_000)
    assert images.decode_raster(data, "f64.tif", max_pixels=10_000, max_side=30).shape == (30, 30, 3)


def test_files_that_inflate_beyond_the_ratio_are_refused(tmp_path):
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 Mpx of one value in ~10 KB
    png = buf.getvalue()
    assert len(png) * formats.MAX_RATIO < 9000 * 9000
    with pytest.raises(LimitExceeded, match=r"blank\.png: .* bytes decode to 81,000,000 \(.*:1, more than 1000:1"):
        images.decode_image(png, "blank.png")
    data = write_tiff(tmp_path / "blank.tif", 4200, 4200, 4, "uint8", compress="zstd", tiled=True)
    with pytest.raises(LimitExceeded, match=r"blank\.tif: .* bytes decode to 70,560,000"):
        decode_upload(data, "blank.tif")


@pytest.fixture(scope="module")
def samples(rsicd_files):
    jpeg = rsicd_files[0].read_bytes()
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, format="PNG")
    tiff = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(tiff, format="TIFF")
    return {"jpeg": jpeg, "png": buf.getvalue(), "tiff": tiff.getvalue()}


@pytest.mark.parametrize("kind, name, claimed", [
    ("png", "png-named.jpg", "JPEG"), ("tiff", "tiff-named.png", "PNG"), ("jpeg", "jpeg-named.png", "PNG"),
    ("tiff", "tiff-named.jpeg", "JPEG"), ("png", "png-named.webp", "WEBP"), ("jpeg", "jpeg-named.bmp", "BMP"),
])
def test_bytes_that_are_not_what_the_name_claims_are_refused(samples, tmp_path, kind, name, claimed):
    message = rf"{name}: not a readable image as {claimed}, the format its name claims"
    with pytest.raises(InvalidInput, match=message):
        images.decode_image(samples[kind], name)
    with pytest.raises(InvalidInput, match=message):
        decode_upload(samples[kind], name)
    (tmp_path / name).write_bytes(samples[kind])
    with pytest.raises(InvalidInput, match=message):
        images.read_image(tmp_path / name)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_images_named_tif_are_opened_by_gtiff_alone(samples, kind):
    with pytest.raises(InvalidInput, match=r"x\.tif: not a readable raster \(opened as GTiff"):
        decode_upload(samples[kind], "x.tif")


def test_suffixes_outside_the_map_are_refused_and_nameless_bytes_may_be_any_chip_format(samples, tmp_path):
    (tmp_path / "x.gif").write_bytes(samples["png"])
    with pytest.raises(UnsafeInput, match=r"x\.gif: not an image type rsclip decodes as an image"):
        images.read_image(tmp_path / "x.gif")
    with pytest.raises(UnsafeInput, match=r"x\.jp2: not an image type"):
        images.decode_image(samples["png"], "x.jp2")  # .jp2 is GDAL's alone
    want = images.decode_image(samples["png"], "x.png")
    for kind in ("png", "tiff"):  # a manifest's byte column carries no name
        np.testing.assert_array_equal(images.decode_image(samples[kind], "<bytes>"), want)
    np.testing.assert_array_equal(images.decode_image(samples["tiff"], "x.TIFF"), want)


def test_one_map_names_every_decoder():
    assert raster.DRIVER_BY_SUFFIX == {".tif": "GTiff", ".tiff": "GTiff", ".jp2": "JP2OpenJPEG"}
    assert images.IMAGE_SUFFIXES == tuple(formats.FORMAT_BY_SUFFIX)
    assert all(images.is_image_name(f"a{s.upper()}") for s in formats.FORMAT_BY_SUFFIX)
    assert {f.pillow for f in formats.FORMAT_BY_SUFFIX.values() if f.pillow} == set(formats.CHIP_FORMATS)


@pytest.mark.parametrize("path", sorted(GEOTIFF_DIR.glob("*.tif")), ids=lambda p: p.name)
def test_the_real_geotiffs_pass_the_bounds(path):
    with raster.open_raster(str(path)) as src:
        width, height = src.width, src.height
    assert images.read_image(path).shape == (height, width, 3)
    side = max(width, height) // 2
    assert max(decode_upload(path.read_bytes(), path.name).shape[:2]) == max(width, height)
    assert max(images.decode_raster(path.read_bytes(), path.name, max_side=side).shape[:2]) == side


def test_the_real_jpegs_pass_the_bounds(rsicd_files):
    for path in rsicd_files[::100]:
        assert images.read_image(path).shape == (150, 150, 3)
        assert decode_upload(path.read_bytes(), path.name).shape == (150, 150, 3)
