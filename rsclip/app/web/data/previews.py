"""Tile previews: the pixels of a tile's window as a small RGB image for people to look at, and where its
corners lie on the map.

A tile row names its source object (local path or ``s3://``) and a pixel window in it. Rasters are read
window-only and decimated to the preview size by GDAL (overviews when the file has them), with the
embedding job's default bands and stretch; chips are decoded whole and cropped. Parts of a window outside
the source and nodata pixels are black. (Uploads are decoded by :mod:`rsclip.app.web.data.uploads`; the page
draws a preview with :mod:`rsclip.app.web.views.tile_image`.)
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from rasterio.warp import transform

from rsclip.geo import raster
from rsclip.geo.images import read_image
from rsclip.geo.windows import Window
from rsclip.errors import InvalidInput

DEFAULT_PREVIEW_SIZE = 256
# A chip read whole to cut one preview from it: larger sources are refused.
MAX_CHIP_BYTES = 64 * 1024 * 1024


def read_raster_window(uri: str | os.PathLike, window: Window, size: int = DEFAULT_PREVIEW_SIZE) -> np.ndarray:
    """The ``window`` of a raster (local or ``s3://``) as RGB uint8, longest side at most ``size``.

    Only the window is read, decimated by GDAL. Raises ``InvalidInput`` naming ``uri``.
    """
    with raster.open_raster(str(uri)) as src:
        try:
            scene = raster.describe_scene(src, raster.RasterOptions())
            return raster.read_scaled(src, scene, raster.fit_shape(window.width, window.height, size), window)
        except InvalidInput as exc:
            raise InvalidInput(f"cannot read raster {uri!s}: {exc}") from None


def read_chip_window(uri: str | os.PathLike, window: Window, size: int = DEFAULT_PREVIEW_SIZE) -> np.ndarray:
    """The ``window`` of an ordinary image (local or ``s3://``) as RGB uint8, longest side at most ``size``."""
    image = read_image(uri, max_bytes=MAX_CHIP_BYTES)
    crop = np.zeros((window.height, window.width, 3), dtype=np.uint8)
    part = window.crop(image)
    crop[: part.shape[0], : part.shape[1]] = part
    out_h, out_w = raster.fit_shape(window.width, window.height, size)
    if (out_h, out_w) == crop.shape[:2]:
        return crop
    return np.asarray(Image.fromarray(crop).resize((out_w, out_h), Image.Resampling.BILINEAR))


def read_preview(uri: str | os.PathLike, window: Window, size: int = DEFAULT_PREVIEW_SIZE) -> np.ndarray:
    """The tile ``window`` of ``uri`` as an RGB uint8 ``(h, w, 3)`` array whose longest side is <= ``size``.

    Raises ``InvalidInput`` (and subclasses) naming ``uri`` when the source cannot or may not be read.
    """
    if size < 1:
        raise InvalidInput(f"preview size must be positive, got {size}")
    window = Window(*window)
    if raster.is_raster(str(uri)):
        return read_raster_window(uri, window, size)
    return read_chip_window(uri, window, size)


def window_corners(uri: str | os.PathLike, window: Window) -> list[list[float]] | None:
    """The WGS84 ``[lon, lat]`` of the top-left, top-right and bottom-left pixel corners of ``window`` of a
    georeferenced raster (where the map draws the tile's preview, rotation included); None for a chip or a
    raster without CRS. Reads the header only. Raises ``InvalidInput`` naming ``uri``."""
    if not raster.is_raster(str(uri)):
        return None
    x, y, w, h = Window(*window)
    with raster.open_raster(str(uri)) as src:
        if src.crs is None:
            return None
        a, b, c, d, e, f = tuple(src.transform)[:6]
        cols, rows = (x, x + w, x), (y, y, y + h)
        lons, lats = transform(src.crs, "EPSG:4326", [a * i + b * j + c for i, j in zip(cols, rows)],
                               [d * i + e * j + f for i, j in zip(cols, rows)])
    corners = [[float(lon), float(lat)] for lon, lat in zip(lons, lats)]
    return corners if np.isfinite(corners).all() else None
