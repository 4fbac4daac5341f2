"""Decoding rules, each in one place: the one format a file name's suffix is opened as, and what one decode may
allocate (pixels, bytes, one block of a tiled or stripped file, compression ratio).

A name picks one decoder: ``x.png`` is opened as PNG only, ``x.tif`` as GeoTIFF only (by GDAL's GTiff driver for
a raster, by Pillow's TIFF plugin for a chip), whatever its bytes are. Bytes that are not what the name says are
refused naming the file. Bytes with no name (a manifest's byte column) may be any chip format.

Bounds, all checked from headers before a pixel is decoded: at most ``max_pixels`` pixels (the caller's limit,
:data:`MAX_IMAGE_PIXELS` by default), at most :data:`BYTES_PER_PIXEL` bytes per allowed pixel for the whole
decode (:func:`decode_budget`: bands and sample size count, not only pixels), no single tile or strip decoding
to more than :data:`MAX_BLOCK_BYTES` (a small file can declare one huge deflated block: a 64x64 image with
16384x16384 tiles), and no file whose decoded size is more than :data:`MAX_RATIO` times its bytes once the
decode is over :data:`RATIO_FLOOR_BYTES`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Callable, NamedTuple

import numpy as np

from rsclip.errors import LimitExceeded, UnsafeInput
from rsclip.runtime import storage


class Format(NamedTuple):
    """How files of one suffix are opened: the one Pillow format (None: never by Pillow) and the one GDAL driver
    (None: not a raster)."""

    pillow: str | None
    gdal: str | None


# The one map from a name's suffix to what opens it (rsclip.geo.images for chips, rsclip.geo.raster for rasters).
FORMAT_BY_SUFFIX = {
    ".jpg": Format("JPEG", None), ".jpeg": Format("JPEG", None), ".png": Format("PNG", None),
    ".bmp": Format("BMP", None), ".webp": Format("WEBP", None),
    ".tif": Format("TIFF", "GTiff"), ".tiff": Format("TIFF", "GTiff"), ".jp2": Format(None, "JP2OpenJPEG"),
}
IMAGE_SUFFIXES = tuple(FORMAT_BY_SUFFIX)
# The Pillow decoders bytes without a name may be opened with (never EPS, which runs Ghostscript, or SVG).
CHIP_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
# Larger images are refused rather than decoded (decompression bombs); big scenes go through rasterio windows.
MAX_IMAGE_PIXELS = 16_384 * 16_384
# What a whole decode may allocate per allowed pixel: an RGBA or 32-bit pixel (Pillow holds RGB in 4 bytes too).
BYTES_PER_PIXEL = 4
# One tile or strip: a decoder allocates a whole block whatever the image's size (a 16384x16384 RGB tile is 805
# MB), so blocks are bounded on their own. Real files: 256-1024 pixel tiles, strips of a few rows; a 128 MiB
# block still holds a whole-image strip of 6,500 x 6,500 RGB.
MAX_BLOCK_BYTES = 128 * 1024 * 1024
# Deflate tops out near 1032:1; a file decoding to more than this many times its size is all one value.
MAX_RATIO = 1000
# Below this decoded size the ratio is not checked (a blank 1000x1000 mask image is harmless).
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
# A raster's overview levels are each checked (one open each); real pyramids have a dozen at most.
MAX_OVERVIEWS = 32


def suffix_of(name: str) -> str:
    """The lower-case suffix of a path, URI or upload name; ``""`` without one. An http(s) URL's query and
    fragment are left off; in a file or object name ``?`` and ``#`` are characters like any other."""
    text = str(name)
    if storage.is_http(text):
        text = re.split("[?#]", text, maxsplit=1)[0]
    return PurePosixPath(text).suffix.lower()


def pillow_formats(name: str) -> tuple[str, ...]:
    """The Pillow formats bytes named ``name`` may be opened as: the one its suffix claims, every chip format for
    a name without a suffix. Raises :class:`UnsafeInput` for a suffix Pillow never opens here (``.svg``, ``.eps``,
    ``.jp2``, ``.gif``...)."""
    suffix = suffix_of(name)
    if not suffix:
        return CHIP_FORMATS
    found = FORMAT_BY_SUFFIX.get(suffix)
    if found is None or found.pillow is None:
        allowed = ", ".join(s for s, f in FORMAT_BY_SUFFIX.items() if f.pillow)
        raise UnsafeInput(f"{name}: not an image type rsclip decodes as an image (allowed: {allowed})")
    return (found.pillow,)


def decode_budget(max_pixels: int) -> int:
    """The bytes one decode limited to ``max_pixels`` pixels may allocate for its pixels."""
    return max_pixels * BYTES_PER_PIXEL


def check_decoded(name: str, nbytes: int, max_pixels: int) -> None:
    """Refuse a decode of ``nbytes`` bytes beyond :func:`decode_budget` with :class:`LimitExceeded` naming
    ``name``."""
    budget = decode_budget(max_pixels)
    if nbytes > budget:
        raise LimitExceeded(f"{name}: decoding it takes {nbytes:,} bytes, more than the decode budget of "
                            f"{budget:,} bytes (bands and sample size count)")


def check_block(name: str, width: int, height: int, bytes_per_pixel: float, what: str = "block") -> None:
    """Refuse a ``width`` x ``height`` tile or strip of ``bytes_per_pixel`` decoded bytes per pixel (all samples
    a block holds) beyond :data:`MAX_BLOCK_BYTES`, with :class:`LimitExceeded` naming ``name``."""
    nbytes = int(width * height * bytes_per_pixel)
    if nbytes > MAX_BLOCK_BYTES:
        raise LimitExceeded(f"{name}: one {width}x{height} {what} decodes to {nbytes:,} bytes, more than the "
                            f"{MAX_BLOCK_BYTES:,} a tile or strip may (decompression bomb refused)")


def check_ratio(name: str, decoded: int, encoded: int) -> None:
    """Refuse ``encoded`` bytes that decode to ``decoded`` bytes, more than :data:`MAX_RATIO` times as many
    (once over :data:`RATIO_FLOOR_BYTES`), with :class:`LimitExceeded` naming ``name``."""
    if decoded > RATIO_FLOOR_BYTES and decoded > MAX_RATIO * max(encoded, 1):
        raise LimitExceeded(f"{name}: {encoded:,} bytes decode to {decoded:,} ({decoded // max(encoded, 1):,}:1, "
                            f"more than {MAX_RATIO}:1; decompression bomb refused)")



def check_raster_blocks(src: Any, name: str, open_overview: Callable[[int], Any] | None = None) -> None:
    """Refuse an open rasterio dataset whose tiles or strips, or those of any of its overview levels (each opened
    with ``open_overview(level)``), decode beyond :data:`MAX_BLOCK_BYTES`: :class:`LimitExceeded` naming ``name``.

    A pixel-interleaved block holds every band (GDAL decodes them together), a band-interleaved one a band.
    """
    _check_dataset(src, name, "block")
    levels = len(src.overviews(1)) if src.count and open_overview is not None else 0
    if levels > MAX_OVERVIEWS:
        raise LimitExceeded(f"{name}: {levels} overview levels, more than the {MAX_OVERVIEWS} a raster may have")
    for level in range(levels):
        with open_overview(level) as overview:
            _check_dataset(overview, name, f"block of overview {level + 1}")


def _check_dataset(src: Any, name: str, what: str) -> None:
    sizes = [np.dtype(d).itemsize for d in src.dtypes]
    by_band = src.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "PIXEL").upper() == "BAND"
    for (height, width), size in zip(src.block_shapes, sizes):
        check_block(name, width, height, size if by_band else sum(sizes), what)


def open_checked(open_level: Callable[..., Any], name: str) -> Any:
    """``open_level()`` (an open rasterio dataset) once :func:`check_raster_blocks` passed, its overviews opened
    with ``open_level(overview_level=n)``; closed again when refused."""
    src = open_level()
    try:
        check_raster_blocks(src, name, lambda level: open_level(overview_level=level))
    except BaseException:
        src.close()
        raise
    return src
