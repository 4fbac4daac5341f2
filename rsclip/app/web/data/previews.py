"""Tile previews and uploads for people to look at: the pixels of a tile's window as a small RGB image.

A tile row names its source object (local path or ``s3://``) and a pixel window in it. Rasters are read
window-only and decimated to the preview size by GDAL (overviews when the file has them), with the
embedding job's default bands and stretch; chips are decoded whole and cropped. Parts of a window outside
the source and nodata pixels are black. Uploads are decoded under the app's limits.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from rsclip.geo import raster
from rsclip.geo.images import decode_any, read_image
from rsclip.geo.windows import Window
from rsclip.errors import InvalidInput, LimitExceeded, UnsafeInput

DEFAULT_PREVIEW_SIZE = 256
# Uploads (a query image, or one scene for the feature finder; archives are embedded by the job). The one
# size limit: Streamlit's server.maxUploadSize is set from MAX_UPLOAD_MB, decode_upload checks the bytes.
MAX_UPLOAD_MB = 32
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# Decoded pixels, checked from the header before any pixel is decoded (~108 MB as RGB at the limit): a
# 9,400 x 9,400 PNG of ~300 KB is refused, not decoded.
MAX_UPLOAD_PIXELS = 6000 * 6000
# Raster uploads are read decimated to at most this many pixels a side (GDAL overviews when present).
UPLOAD_RASTER_SIDE = 2048
# What an upload may be, by its name's suffix (the uploader's filter, and decode_upload's refusal).
UPLOAD_TYPES = ("jpg", "jpeg", "png", "tif", "tiff", "bmp", "webp")
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
    from rasterio.warp import transform

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


def check_upload(data: bytes, name: str) -> None:
    """Refuse an upload by its name and size: a suffix outside :data:`UPLOAD_TYPES` (``UnsafeInput``) or more
    than :data:`MAX_UPLOAD_BYTES` (``LimitExceeded``), each naming ``name`` and the rule."""
    suffix = PurePosixPath(name).suffix.lower().lstrip(".")
    if suffix not in UPLOAD_TYPES:
        raise UnsafeInput(f"{name}: not an image type the app opens (allowed: {', '.join(UPLOAD_TYPES)})")
    if len(data) > MAX_UPLOAD_BYTES:
        raise LimitExceeded(f"{name}: {len(data):,} bytes is more than the upload limit of {MAX_UPLOAD_MB} MB")


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded file (an ordinary image, or a GeoTIFF of any band type) as RGB uint8.

    Opened only as the format its name claims (:func:`check_upload`); at most :data:`MAX_UPLOAD_PIXELS`,
    checked before decoding; rasters read decimated to :data:`UPLOAD_RASTER_SIDE`. Raises ``InvalidInput``
    (``UnsafeInput``, ``LimitExceeded``) naming ``name``.
    """
    check_upload(data, name)
    return decode_any(data, name, max_pixels=MAX_UPLOAD_PIXELS, max_side=UPLOAD_RASTER_SIDE)
