"""Uploaded images (a query image, or one scene for the feature finder): checked by name, bytes and pixels,
then decoded as RGB under the app's limits; and what one session may upload in all (:class:`UploadLedger`).
(Archives are embedded by the job, never uploaded.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import NamedTuple

import numpy as np

from rsclip.app.server import MAX_UPLOAD_MB
from rsclip.errors import LimitExceeded, UnsafeInput
from rsclip.geo.formats import FORMAT_BY_SUFFIX
from rsclip.geo.images import decode_any

# The one size limit (MAX_UPLOAD_MB, the launcher's): Streamlit's server.maxUploadSize is set from it,
# decode_upload checks the bytes.
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# Decoded pixels, checked from the header before any pixel is decoded (~108 MB as RGB at the limit): a
# 9,400 x 9,400 PNG of ~300 KB is refused, not decoded.
MAX_UPLOAD_PIXELS = 6000 * 6000
# Raster uploads are read decimated to at most this many pixels a side (GDAL overviews when present).
UPLOAD_RASTER_SIDE = 2048
# What an upload may be, by its name's suffix (the uploader's filter, and decode_upload's refusal): the formats
# rsclip decodes with Pillow (rsclip.geo.formats, one format per name), each decoded only as its name says.
UPLOAD_TYPES = tuple(suffix.lstrip(".") for suffix, found in FORMAT_BY_SUFFIX.items() if found.pillow)
# What one browser session may upload over its life (each upload is a fresh file the server keeps in memory until
# it is released): this many files and this many bytes in all. A reload starts a new session.
MAX_SESSION_UPLOADS = 24
MAX_SESSION_UPLOAD_MB = 8 * MAX_UPLOAD_MB
MAX_SESSION_UPLOAD_BYTES = MAX_SESSION_UPLOAD_MB * 1024 * 1024


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


class Admission(NamedTuple):
    """What :meth:`UploadLedger.admit` decided: ``refusal`` (a one-line message, None when the upload may be
    used) and ``released`` (file ids the server may forget now: replaced uploads, and a refused one)."""

    refusal: str | None
    released: tuple[str, ...]


@dataclass
class UploadLedger:
    """The uploads of one browser session: the one each uploader holds now (``held``: uploader key -> file id),
    how many were accepted and their bytes in all (``count``, ``total``), and each uploader's last refusal
    (``refused``: key -> (file id, message)) under the session's caps (:data:`MAX_SESSION_UPLOADS`,
    :data:`MAX_SESSION_UPLOAD_BYTES`).

    An uploader holds at most one upload: the one it replaces is released (the browser usually deletes it
    itself, but not when the uploader was unmounted by a switch of tabs, nor a client that never asks), so a
    session keeps at most one file per uploader in memory however often it uploads."""

    held: dict[str, str] = field(default_factory=dict)
    count: int = 0
    total: int = 0
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)

    def admit(self, key: str, file_id: str | None, size: int = 0, name: str = "") -> Admission:
        """Record that uploader ``key`` now holds upload ``file_id`` (``size`` bytes, named ``name``; None:
        no upload). A new upload past a cap is refused, naming ``name`` and the cap; that refusal is given again
        while ``key`` holds no upload (the uploader still lists the refused file, whose bytes are released)."""
        previous = self.held.get(key)
        released = (previous,) if previous and previous != file_id else ()
        refused_id, refusal = self.refused.get(key, (None, None))
        if file_id is None or file_id == refused_id:  # no upload, or a refused one shown again
            self.held.pop(key, None)
            return Admission(refusal, (*released, *([file_id] if file_id else [])))
        if file_id == previous:
            return Admission(None, ())
        if self.count >= MAX_SESSION_UPLOADS or self.total + size > MAX_SESSION_UPLOAD_BYTES:
            self.held.pop(key, None)
            refusal = self.cap_message(name, size)
            self.refused[key] = (file_id, refusal)
            return Admission(refusal, (*released, file_id))
        self.held[key] = file_id
        self.refused.pop(key, None)
        self.count += 1
        self.total += size
        return Admission(None, released)

    def cap_message(self, name: str, size: int) -> str:
        """Why ``name`` (``size`` bytes) is refused: the cap it would pass."""
        if self.count >= MAX_SESSION_UPLOADS:
            why = f"this session has already sent {self.count} uploads, the most one session may send"
        else:
            why = (f"its {size:,} bytes would pass the {MAX_SESSION_UPLOAD_MB} MB one session may upload in all "
                   f"({self.total:,} bytes sent)")
        return f"{name}: not used: {why}; reload the page to start a new session"
