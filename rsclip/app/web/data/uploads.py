"""Uploaded images (a query image, or one scene for the feature finder): checked by name, bytes and pixels,
then decoded as RGB under the app's limits. (Archives are embedded by the job, never uploaded.)"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from rsclip.app.server import MAX_UPLOAD_MB
from rsclip.errors import LimitExceeded, UnsafeInput
from rsclip.geo.images import decode_any

# The one size limit (MAX_UPLOAD_MB, the launcher's): Streamlit's server.maxUploadSize is set from it,
# decode_upload checks the bytes.
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# Decoded pixels, checked from the header before any pixel is decoded (~108 MB as RGB at the limit): a
# 9,400 x 9,400 PNG of ~300 KB is refused, not decoded.
MAX_UPLOAD_PIXELS = 6000 * 6000
# Raster uploads are read decimated to at most this many pixels a side (GDAL overviews when present).
UPLOAD_RASTER_SIDE = 2048
# What an upload may be, by its name's suffix (the uploader's filter, and decode_upload's refusal).
UPLOAD_TYPES = ("jpg", "jpeg", "png", "tif", "tiff", "bmp", "webp")


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
