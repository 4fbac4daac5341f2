"""Tile previews and uploads for people to look at: the pixels of a tile's window as a small RGB image.

A tile row names its source object (local path or ``s3://``) and a pixel window in it. Rasters are read
window-only and decimated to the preview size by GDAL (overviews when the file has them), with the
embedding job's default bands and stretch; chips are decoded whole and cropped. Parts of a window outside
the source and nodata pixels are black. Uploads are decoded under the app's limits.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from rsclip.core import raster
from rsclip.core.images import decode_any, read_image
from rsclip.core.windows import Window
from rsclip.errors import InvalidInput, LimitExceeded

DEFAULT_PREVIEW_SIZE = 256
# Uploads: bytes and decoded pixels a query image may have (a query, not a scene to tile).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_PIXELS = 8192 * 8192
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


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded file (an ordinary image, or a GeoTIFF/JPEG 2000 of any band type) as RGB uint8.

    Opened only as the format its name claims; at most :data:`MAX_UPLOAD_BYTES` and
    :data:`MAX_UPLOAD_PIXELS`. Raises ``InvalidInput`` (``UnsafeInput``, ``LimitExceeded``) naming ``name``.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise LimitExceeded(f"{name}: {len(data)} bytes is more than the upload limit of {MAX_UPLOAD_BYTES}")
    return decode_any(data, name, max_pixels=MAX_UPLOAD_PIXELS)
