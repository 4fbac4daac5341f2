"""Reading whole images (chips) from local paths or ``s3://`` into uint8 HWC arrays."""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image

from rsclip import storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Larger images are refused rather than decoded (decompression bombs); big scenes go through rasterio.
MAX_IMAGE_PIXELS = 16_384 * 16_384


@contextmanager
def _opened(data: bytes, name: str):
    """The PIL image in ``data`` once its header passed the checks; errors in the block become ValueError.

    Refuses empty data, decompression bombs (by Pillow's limit or ``MAX_IMAGE_PIXELS``), images smaller than
    2x2 pixels and anything Pillow cannot read, each with a ``ValueError`` naming ``name``.
    """
    if not data:
        raise ValueError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{name}: decompression bomb refused ({im.width}x{im.height} pixels "
                                     "exceeds the decode limit)")
                if im.width < 2 or im.height < 2:
                    raise ValueError(f"{name}: image is too small ({im.width}x{im.height} pixels)")
                yield im
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{name}: decompression bomb refused ({exc})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error... for broken files
        raise ValueError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None


def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """``(width, height)`` from the header of encoded image bytes, without decoding the pixels.

    Raises ``ValueError`` as :func:`decode_image` does for empty, non-image, bomb and too-small data.
    """
    with _opened(data, name) as im:
        return im.width, im.height


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB ``(H, W, 3)`` uint8 array.

    Raises ``ValueError`` naming ``name`` for empty, truncated or non-image data, decompression bombs and
    images smaller than 2x2 pixels.
    """
    with _opened(data, name) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The bytes of a local file or ``s3://`` object. Raises ``ValueError`` when it cannot be read."""
    fs, path = storage.filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"cannot read image {uri!s}: {exc}") from None


def read_image(uri: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from an image file or object. Raises ``ValueError`` naming ``uri``."""
    return decode_image(read_bytes(uri), str(uri))
