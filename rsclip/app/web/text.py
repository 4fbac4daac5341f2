"""The web app's text helpers: values from the table, uploads and errors made into plain text the page shows as
is (:func:`escape_markdown`, :func:`readable_error`, a tile's window, bounds and source name), and the typed
bounding box parsed (:func:`parse_bbox`). No Streamlit here: the views draw what these return.
"""

from __future__ import annotations

import re

import numpy as np

from rsclip.runtime import faults, reporting
from rsclip import errors
from rsclip.search.filters import BBox, validate_bbox
from rsclip.table import tiles

MAX_MESSAGE_CHARS = 300
# Longest bounding box text accepted (four numbers need a few dozen characters).
MAX_BBOX_CHARS = 200


def parse_bbox(text: str | None) -> BBox | None:
    """A bounding box typed as ``lon_min, lat_min, lon_max, lat_max`` (commas and/or spaces); None when blank.

    Raises ``ValueError`` with a readable message for anything else (see ``rsclip.query.validate_bbox``).
    """
    if text is None or not text.strip():
        return None
    if len(text) > MAX_BBOX_CHARS:
        raise errors.LimitExceeded(f"bounding box text is {len(text):,} characters long, more than the limit of "
                                   f"{MAX_BBOX_CHARS}")
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if len(parts) != 4:
        raise ValueError(
            f"bounding box needs four numbers lon_min, lat_min, lon_max, lat_max; got {len(parts)} value(s)"
        )
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"bounding box values must be numbers, got {text.strip()!r}") from None
    return validate_bbox(numbers)


def describe_bounds(row) -> str:
    """``lon/lat`` bounds of a hit as text, or a note that the tile has no georeference."""
    values = [row[c] for c in tiles.BOUNDS_COLUMNS]
    if any(v is None or not np.isfinite(v) for v in values):
        return "no georeference"
    lon_min, lat_min, lon_max, lat_max = values
    return f"lon {lon_min:.4f} to {lon_max:.4f}, lat {lat_min:.4f} to {lat_max:.4f}"


def describe_window(row) -> str:
    """The tile window of a hit as text."""
    return f"x={int(row[tiles.X])} y={int(row[tiles.Y])} {int(row[tiles.WIDTH])}x{int(row[tiles.HEIGHT])} px"


def source_name(uri: str) -> str:
    """The last path component of a source URI (full URI in the tooltip)."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def model_name(model: str, weights_sha256: str | None = None) -> str:
    """The model of a table as the page names it, never a server path: a hub id as is, a folder, file or
    ``s3://`` prefix by its last component; with ``weights_sha256``, its first 12 hex digits after it."""
    text = str(model)
    local = text.startswith(("/", ".", "~")) or "://" in text or "\\" in text
    name = source_name(text.replace("\\", "/")) if local else text
    return f"{name} · weights {weights_sha256[:12]}" if weights_sha256 else name


# ASCII punctuation: each can start markdown (links, images, HTML, emphasis, colour and icon directives, math).
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def escape_markdown(text) -> str:
    """``text`` as Streamlit markdown that shows it as is: every ASCII punctuation mark backslash-escaped and
    line breaks made spaces, so an object name, a table value or an upload name renders no image, link,
    HTML, directive or formula. Every such value goes through here before ``st.markdown``/``caption``/
    ``error``/``help``."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))


def readable_error(exc: BaseException) -> str:
    """A one-line message for the page.

    Object-store faults (which LanceDB reports as long debug dumps) become a short sentence naming the
    cause; other errors keep their first line, cut to :data:`MAX_MESSAGE_CHARS` (ValueError text as is,
    anything else prefixed with its type name).
    """
    fault = faults.store_fault(exc)
    if fault is not None and not isinstance(exc, errors.RsclipError):
        return fault.advice
    first = reporting.one_line(exc, MAX_MESSAGE_CHARS)
    return first if isinstance(exc, ValueError) else f"{type(exc).__name__}: {first}"
