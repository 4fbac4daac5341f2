"""Tile previews: the pixels of a tile's window as a small RGB image, for people to look at.

A tile row names its source object (local path or ``s3://``) and a pixel window in it. The source is read
the way the embedding job read it (``rsclip.archive``): TIFF/GeoTIFF/COG scenes through rasterio, only the
window, decimated to the preview size by GDAL (overviews are used when the file has them), scaled to uint8
with the scene's default stretch (``rsclip.raster``); other images (JPEG, PNG...) decoded whole and cropped.
Parts of a window outside the source and nodata pixels are black.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from rsclip import raster
from rsclip.archive import TIFF_SUFFIXES
from rsclip.imageio import decode_image, read_image

DEFAULT_PREVIEW_SIZE = 256
# Uploaded rasters larger than this many pixels are refused (a query image, not a scene to tile).
MAX_UPLOAD_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Window:
    """A pixel window ``(x, y, width, height)`` in a source image; the whole image is ``0, 0, W, H``."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"window must have a positive size, got {self.width}x{self.height}")
        if self.x < 0 or self.y < 0:
            raise ValueError(f"window offset must not be negative, got ({self.x}, {self.y})")


def is_raster(uri: str | os.PathLike) -> bool:
    """True when ``uri`` is read through rasterio (TIFF/GeoTIFF/COG), as the embedding job reads it."""
    return str(uri).lower().endswith(TIFF_SUFFIXES)


def preview_shape(window: Window, size: int) -> tuple[int, int]:
    """``(height, width)`` of the preview of ``window``: scaled down so the longest side is <= ``size``."""
    scale = min(1.0, size / max(window.width, window.height))
    return max(1, round(window.height * scale)), max(1, round(window.width * scale))


def _masked_to_rgb(data: np.ma.MaskedArray, scene: raster.SceneInfo) -> np.ndarray:
    mask = np.ma.getmaskarray(data)
    values = np.ma.getdata(data)
    if np.issubdtype(values.dtype, np.floating):
        mask = mask | ~np.isfinite(values)
    pixels = raster.to_uint8(values, scene.scale_lo, scene.scale_hi)
    pixels = np.where(mask, np.uint8(0), pixels)
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def read_raster_window(uri: str | os.PathLike, window: Window, size: int = DEFAULT_PREVIEW_SIZE) -> np.ndarray:
    """The ``window`` of a GDAL raster (local or ``s3://``) as RGB uint8, longest side at most ``size``.

    Only the window is read, decimated by GDAL. Raises ``ValueError`` naming ``uri`` when it cannot be
    opened or read, or has an unsupported data type.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window as RioWindow

    out_h, out_w = preview_shape(window, size)
    with raster.gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(raster.gdal_path(str(uri))) as src:
                scene = raster.describe_scene(src, raster.RasterOptions())
                data = src.read(
                    list(scene.bands),
                    window=RioWindow(window.x, window.y, window.width, window.height),
                    out_shape=(len(scene.bands), out_h, out_w),
                    resampling=Resampling.bilinear,
                    boundless=True,
                    masked=True,
                )
        except RasterioError as exc:
            raise ValueError(f"cannot read raster {uri!s}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"cannot read raster {uri!s}: {exc}") from None
    return _masked_to_rgb(data, scene)


def read_chip_window(uri: str | os.PathLike, window: Window, size: int = DEFAULT_PREVIEW_SIZE) -> np.ndarray:
    """The ``window`` of an ordinary image (local or ``s3://``) as RGB uint8, longest side at most ``size``.

    Raises ``ValueError`` naming ``uri`` when it cannot be read.
    """
    image = read_image(uri)
    crop = np.zeros((window.height, window.width, 3), dtype=np.uint8)
    part = image[window.y : window.y + window.height, window.x : window.x + window.width]
    crop[: part.shape[0], : part.shape[1]] = part
    out_h, out_w = preview_shape(window, size)
    if (out_h, out_w) == crop.shape[:2]:
        return crop
    return np.asarray(Image.fromarray(crop).resize((out_w, out_h), Image.Resampling.BILINEAR))


def read_preview(uri: str | os.PathLike, window: Window, size: int = DEFAULT_PREVIEW_SIZE) -> np.ndarray:
    """The tile ``window`` of ``uri`` as an RGB uint8 ``(h, w, 3)`` array whose longest side is <= ``size``.

    TIFF/GeoTIFF sources are read window-only through rasterio; other images are decoded and cropped.
    Raises ``ValueError`` naming ``uri`` when the source cannot be read.
    """
    if size < 1:
        raise ValueError(f"preview size must be positive, got {size}")
    if is_raster(uri):
        return read_raster_window(uri, window, size)
    return read_chip_window(uri, window, size)


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """An uploaded file (an ordinary image or a TIFF/GeoTIFF of any band type) as RGB uint8 ``(H, W, 3)``.

    Rasters are read in memory through rasterio with the embedding job's default bands and stretch.
    Raises ``ValueError`` naming ``name`` for empty, unreadable or oversized data.
    """
    if not is_raster(name):
        return decode_image(data, name)
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    if not data:
        raise ValueError(f"{name}: empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with MemoryFile(data) as memfile, memfile.open() as src:
                if src.width * src.height > MAX_UPLOAD_PIXELS:
                    raise ValueError(f"{name}: {src.width}x{src.height} pixels is too large for a query image")
                scene = raster.describe_scene(src, raster.RasterOptions())
                pixels = _masked_to_rgb(src.read(list(scene.bands), masked=True), scene)
        except RasterioError as exc:
            raise ValueError(f"{name}: not a readable image or raster ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") if not str(exc).startswith(name) else exc from None
    if pixels.shape[0] < 2 or pixels.shape[1] < 2:
        raise ValueError(f"{name}: image is too small ({pixels.shape[1]}x{pixels.shape[0]} pixels)")
    return pixels
