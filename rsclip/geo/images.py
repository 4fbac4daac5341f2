"""Images: decoding chips, reading any image or raster into RGB uint8, and the checks both go through.

Chips (JPEG, PNG, TIFF without georeference, BMP, WebP) are decoded by Pillow restricted to the one format
their name claims (:func:`rsclip.geo.formats.pillow_formats`; any of ``CHIP_FORMATS`` for bytes without a
name): formats that can run programs (EPS through Ghostscript) or reference other files are never tried.
Rasters go through :mod:`rsclip.geo.raster` (one GDAL driver per suffix). Every decoded image passes the same header
checks first (:func:`image_size`): not empty, not a decompression bomb (pixels, a TIFF's tiles or strips,
:mod:`~rsclip.geo.formats`' bounds), at least 2x2 pixels.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from typing import Any, Union

import numpy as np
from PIL import Image

from rsclip.geo import formats, raster
from rsclip.geo.formats import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS
from rsclip.runtime import storage
from rsclip.errors import InvalidInput, LimitExceeded

# What the API accepts as an image: a path or URI, a PIL image or an HWC uint8 array.
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
# TIFF tags a Pillow decode allocates by: tile width and length, rows per strip, samples, bits, planar config.
_TILE_WIDTH, _TILE_LENGTH, _ROWS_PER_STRIP, _SAMPLES, _BITS, _PLANAR = 322, 323, 278, 277, 258, 284


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with a suffix rsclip reads as an image or raster."""
    return str(name).lower().endswith(IMAGE_SUFFIXES)


@contextmanager
def _opened(data: bytes, name: str, max_pixels: int, claim: str | None = None):
    """The PIL image in ``data`` once its header passed the checks; errors in the block become InvalidInput.

    Refuses empty data, decompression bombs (by Pillow's limit or ``max_pixels``, TIFF tiles or strips over
    :data:`~rsclip.geo.formats.MAX_BLOCK_BYTES`), images smaller than 2x2 pixels and anything but the format
    ``name`` claims (:func:`~rsclip.geo.formats.pillow_formats`; ``claim`` instead when given: ``""`` for bytes
    that claim no format, such as a manifest's byte column), each with a message naming ``name``.
    """
    allowed = formats.pillow_formats(name if claim is None else claim)
    if not data:
        raise InvalidInput(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=allowed) as im:
                if im.width * im.height > max_pixels:
                    raise LimitExceeded(f"{name}: {im.width}x{im.height} pixels exceeds the decode limit of "
                                        f"{max_pixels} pixels (decompression bomb refused)")
                if im.width < 2 or im.height < 2:
                    raise InvalidInput(f"{name}: image is too small ({im.width}x{im.height} pixels)")
                if im.format == "TIFF":
                    _check_tiff_blocks(im, name)
                yield im
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise LimitExceeded(f"{name}: decompression bomb refused ({exc})") from None
    except Image.UnidentifiedImageError:  # its message names a BytesIO object, nothing of use
        if len(allowed) == 1:
            raise InvalidInput(f"{name}: not a readable image as {allowed[0]}, the format its name claims (no "
                               "other is tried)") from None
        raise InvalidInput(f"{name}: not a readable image (none of {', '.join(allowed)})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error... for broken files
        raise InvalidInput(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None


def _check_tiff_blocks(im: Image.Image, name: str) -> None:
    """Refuse a TIFF whose one tile or strip decodes beyond the block bound (libtiff allocates a whole tile,
    however small the image: a 64x64 image may declare 16384x16384 tiles)."""
    tags = im.tag_v2
    bits = tags.get(_BITS, (8,))
    bits = max(bits) if isinstance(bits, tuple) else bits
    samples = int(tags.get(_SAMPLES, 1)) if tags.get(_PLANAR, 1) == 1 else 1
    if _TILE_WIDTH in tags:
        width, height, what = int(tags[_TILE_WIDTH]), int(tags.get(_TILE_LENGTH, tags[_TILE_WIDTH])), "tile"
    else:  # libtiff reads at most the image's height per strip
        width, height, what = im.width, min(int(tags.get(_ROWS_PER_STRIP, im.height)), im.height), "strip"
    formats.check_block(name, width, height, samples * int(bits) / 8, what)


def image_size(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header of encoded chip bytes, without decoding the pixels.

    Raises ``InvalidInput``/``LimitExceeded`` as :func:`decode_image` does.
    """
    with _opened(data, name, max_pixels) as im:
        return im.width, im.height


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS, *,
                 claim: str | None = None, reduce_to: int | None = None) -> np.ndarray:
    """Decode encoded chip bytes to an RGB ``(H, W, 3)`` uint8 array, only as the format ``name`` (or ``claim``,
    when given; ``""``: bytes that claim none, any chip format) says they are.

    With ``reduce_to``, a JPEG whose shortest side is at least twice that is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), its shortest side kept >= ``reduce_to``, each side rounded up: a chip that will
    be resized down to the model's input is not decoded in full first. Smaller images, and other formats,
    decode in full, pixel for pixel. The header's full size is what the checks below bound.

    Raises ``InvalidInput`` naming ``name`` for empty, truncated, non-image or disallowed-format data and
    images smaller than 2x2 pixels; ``LimitExceeded`` above ``max_pixels`` or :mod:`~rsclip.geo.formats`' bounds.
    """
    with _opened(data, name, max_pixels, claim) as im:
        formats.check_ratio(name, im.width * im.height * len(im.getbands()), len(data))
        shortest = min(im.width, im.height)
        if reduce_to and im.format == "JPEG" and shortest >= 2 * reduce_to:
            scale = shortest / reduce_to  # draft keeps each side >= the size asked for
            im.draft("RGB", (int(np.ceil(im.width / scale)), int(np.ceil(im.height / scale))))
        im.load()
        # convert() copies even an RGB image (a seventh of a small chip's decode): only other modes convert
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def decode_raster(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                  max_side: int | None = None) -> np.ndarray:
    """Raster bytes (GeoTIFF of any band type, JPEG 2000) as RGB uint8 with the embedding job's default bands
    and stretch; with ``max_side``, read decimated to at most that many pixels a side.

    Checked from the header before any pixel is read: at most ``max_pixels`` pixels, tiles and strips within
    their bound (:func:`~rsclip.geo.raster.open_raster_bytes`), the read within the decode budget and the
    compression ratio within its bound (:mod:`~rsclip.geo.formats`). Raises
    ``InvalidInput``/``UnsafeInput``/``LimitExceeded`` naming ``name``.
    """
    with raster.open_raster_bytes(data, name) as src:
        if src.width * src.height > max_pixels:
            raise LimitExceeded(f"{name}: {src.width}x{src.height} pixels exceeds the decode limit of "
                                f"{max_pixels} pixels")
        sample = max(np.dtype(d).itemsize for d in src.dtypes)
        formats.check_ratio(name, src.width * src.height * src.count * sample, len(data))
        shape = raster.fit_shape(src.width, src.height, max_side) if max_side else (src.height, src.width)
        formats.check_decoded(name, shape[0] * shape[1] * len(raster.choose_bands(src.count, None)) * sample,
                              max_pixels)
        try:
            scene = raster.describe_scene(src, raster.RasterOptions())
        except InvalidInput as exc:
            raise InvalidInput(f"{name}: {exc}") from None
        pixels = raster.read_scaled(src, scene, shape)
    if pixels.shape[0] < 2 or pixels.shape[1] < 2:
        raise InvalidInput(f"{name}: image is too small ({pixels.shape[1]}x{pixels.shape[0]} pixels)")
    return pixels


def decode_any(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int | None = None) -> np.ndarray:
    """Bytes named ``name`` (an upload, an object) as RGB uint8: rasters by their GDAL driver (decimated to
    ``max_side`` when given), the rest as chips. Raises ``InvalidInput`` (and its subclasses) naming ``name``."""
    if raster.is_raster(name):
        return decode_raster(data, name, max_pixels, max_side)
    return decode_image(data, name, max_pixels)


def read_image(uri: str | os.PathLike, max_bytes: int = storage.MAX_READ_BYTES,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from an image or raster file or object (read whole).

    Raises ``InvalidInput`` (``NotFound``, ``UnsafeInput``, ``LimitExceeded``) naming ``uri``.
    """
    return decode_any(storage.read_bytes(uri, max_bytes=max_bytes), str(uri), max_pixels)


def to_hwc_uint8(image: Any) -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 array from a PIL image, a tensor or an array (HW grey, HWC with 1, 3 or 4
    bands). Raises ``InvalidInput`` for other shapes, non-uint8 arrays and images smaller than 2x2."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor, without importing torch
        array = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InvalidInput(f"expected an image array or PIL image, got {type(image).__name__}")
    if array.dtype != np.uint8:
        raise InvalidInput(f"image arrays must be uint8 HWC, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InvalidInput(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise InvalidInput(f"image is too small to embed: {array.shape[1]}x{array.shape[0]} pixels")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return array
