"""Raster windows read through GDAL's block cache (issue 26): each tile of a GeoTIFF is fetched and decoded once
per open, however many windows are cut from it.

``GDAL_CACHEMAX`` was given to rasterio as ``256`` meaning MB; rasterio passes an int to GDAL as bytes, so there
was no block cache: every 224-pixel window of a NAIP COG on S3 downloaded its 512-pixel tiles again (5.6 times
the file's bytes) and decoded them again (13x fewer windows per CPU-second, BENCHMARKS.md "Scaling inputs").
"""

from __future__ import annotations

import logging

import pytest

from rsclip.geo import raster
from rsclip.runtime import storage
from tests.helpers import GEOTIFF_DIR

NAIP = GEOTIFF_DIR / "m_4709963_se_14_1_20200831.tif"  # 934x723, 4 bands, 512-pixel deflate tiles


def test_gdal_gets_a_block_cache_of_megabytes():
    import rasterio.env

    with raster.gdal_env():
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) >= 64 * 1024 * 1024


class _Downloads(logging.Handler):
    """GDAL's debug lines (through rasterio's logger): the byte ranges its HTTP reads fetched."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bytes = 0

    def emit(self, record):
        text = record.getMessage()
        if "Downloading " in text:
            first, last = text.rsplit("Downloading ", 1)[1].split(" ", 1)[0].split("-")
            self.bytes += int(last) - int(first) + 1


@pytest.mark.slow  # the session's S3 server
def test_windows_of_a_cog_on_s3_fetch_each_tile_once(s3_prefix, monkeypatch):
    uri = f"{s3_prefix}/naip.tif"
    storage.write_bytes(uri, NAIP.read_bytes())
    downloads, logger = _Downloads(), logging.getLogger("rasterio")
    monkeypatch.setenv("CPL_DEBUG", "ON")
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    logger.addHandler(downloads)
    try:
        with raster.open_raster(uri) as src:
            scene, windows = raster.plan_scene(src, raster.RasterOptions())
            assert len(windows) >= 12
            for window in windows:
                pixels, _ = raster.read_tile(src, window, scene)
                assert pixels is not None and pixels.shape[:2] == (window.height, window.width)
    finally:
        logger.removeHandler(downloads)
    assert 0 < downloads.bytes <= 1.5 * NAIP.stat().st_size, downloads.bytes
