"""Query encoding: a text, an image or a vector as one unit vector of a table's model.

A ``str`` is text unless it names an image (:func:`looks_like_image_path`: an ``s3://``/``file://`` URI, or a
name ending in an image suffix such as ``.jpg``); a :class:`Text` is always text (what a web visitor types). Images are paths, URIs, PIL images or HWC uint8
arrays; a vector is scaled to unit length. An image query's own tile (:func:`self_ids`) is what the search
leaves out of its results.
"""

from __future__ import annotations

import math
import os
from typing import Sequence, Union

import numpy as np
from PIL import Image

from rsclip.runtime import storage, texts
from rsclip.table import tiles
from rsclip.geo.images import is_image_name, read_image
from rsclip.model.clip import cached_model
from rsclip.errors import InvalidInput, LimitExceeded, NotFound

# Longest text query encoded (a CLIP tokenizer keeps 77 tokens; longer text only costs tokenising time).
MAX_TEXT_CHARS = 2_000

QueryLike = Union[str, os.PathLike, Image.Image, np.ndarray, Sequence[float]]


class Text(str):
    """A string that is always a text query, never read as a path or URI: what a web visitor types.

    ``query(db, Text("file:///etc/passwd"))`` embeds those characters as text; a plain ``str`` that names an
    image (:func:`looks_like_image_path`) is read as one (the Python API's path queries).
    """


def looks_like_image_path(text: str) -> bool:
    """True when a string query names an image, so that it is read as one (and a missing one is an error,
    never a text search for its name); never for :class:`Text`. A string names an image when it

    - starts with ``s3://`` or ``file://`` (a URI), or
    - ends with an image suffix (``.jpg``, ``.jpeg``, ``.png``, ``.tif``, ``.tiff``, ``.bmp``, ``.webp``,
      ``.jp2``, in any case: :func:`~rsclip.geo.images.is_image_name`), whether or not such a file exists.

    Anything else is text, slashes and dots included: ``"airport/runway"``, ``"3.5 m resolution"``,
    ``"harbour, 2020."``. Words that end like a file name are searched for as text with ``Text("x.png")``."""
    if isinstance(text, Text):
        return False
    return text.startswith(("s3://", "file://")) or is_image_name(text)


def read_query_image(query: str | os.PathLike) -> np.ndarray:
    """The pixels of an image query named by a path or URI. Raises ``NotFound`` naming a local path that is
    not there (saying how to search for such words as text), ``InvalidInput`` for an unreadable image."""
    name = str(query)
    if not storage.is_remote(name):
        try:
            os.lstat(storage.local_path(name))
        except FileNotFoundError:
            hint = "; to search for these words as text, pass Text(...)" if isinstance(query, str) else ""
            raise NotFound(f"image query {name}: no such file{hint}") from None
        except OSError:  # no permission, a name too long, ...: read_image says which
            pass
    return read_image(query)


def is_image_query(query) -> bool:
    """True when ``query`` is an image (path, URI, PIL image or HWC uint8 array) rather than text or a vector."""
    if isinstance(query, str):
        return looks_like_image_path(query)
    if isinstance(query, (os.PathLike, Image.Image)):
        return True
    return isinstance(query, np.ndarray) and query.ndim in (2, 3) and query.dtype == np.uint8


def checked_text(text: str, what: str = "text query") -> str:
    """``text`` once it may be encoded: a string of characters (no lone surrogate), not blank, at most
    :data:`MAX_TEXT_CHARS` characters. Raises ``InvalidInput`` (``LimitExceeded`` for long text) naming ``what``."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{what} is empty (a non-empty text is needed)")
    if len(text) > MAX_TEXT_CHARS:
        raise LimitExceeded(f"{what} is {len(text):,} characters long, more than the limit of {MAX_TEXT_CHARS:,}")
    return str(texts.check_characters(text, what))


def text_vector(text: str, model: str) -> np.ndarray:
    """The unit vector of a text query. Raises ``InvalidInput`` for blank and ``LimitExceeded`` for long text."""
    return cached_model(model).encode_texts([checked_text(text)])[0]


def unit_vector(values, dim: int) -> np.ndarray:
    """A numeric ``(dim,)`` vector scaled to unit length. Raises ``InvalidInput`` for other shapes and zero."""
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.number):
        raise InvalidInput(f"query must be text, an image or a {dim}-d vector; got an array of shape {array.shape}, "
                           f"dtype {array.dtype}")
    if array.shape[0] != dim:
        raise InvalidInput(f"query vector has {array.shape[0]} values, the table's embeddings have {dim}")
    vector = array.astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidInput("query vector must be finite and non-zero")
    return vector / norm


def query_vector(query: QueryLike, model: str, dim: int) -> np.ndarray:
    """The unit ``(dim,)`` vector for a query: text, image (path, URI, PIL, HWC uint8 array) or vector.

    A ``str`` is text unless it names an image (:func:`looks_like_image_path`). Raises ``InvalidInput`` for
    blank text, missing or unreadable images and vectors of the wrong size.
    """
    if isinstance(query, str) and not looks_like_image_path(query):
        vector = text_vector(query, model)
    elif isinstance(query, (str, os.PathLike)):
        vector = cached_model(model).encode_images([read_query_image(query)])[0]
    elif is_image_query(query):
        vector = cached_model(model).encode_images([query])[0]
    else:
        return unit_vector(query, dim)
    return _checked_dim(vector, model, dim)


def self_ids(query: str | os.PathLike, image: np.ndarray) -> set[str]:
    """Ids the query image's own whole-image tile can have in a table: its uri as given, absolute, file://."""
    text = str(query)
    uris = {text}
    if not storage.is_remote(text):
        local = str(storage.local_path(text))
        uris |= {local, os.path.abspath(local), os.path.realpath(local), "file://" + os.path.abspath(local)}
    h, w = image.shape[:2]
    return {tiles.tile_id(u, 0, 0, w, h) for u in uris}


def _checked_dim(vector: np.ndarray, model: str, dim: int) -> np.ndarray:
    if vector.shape[0] != dim:
        raise InvalidInput(f"model {model} gives {vector.shape[0]}-d embeddings, the table holds {dim}-d")
    return vector
