"""Captioned training data: readers for the RSICD format and manifests.

A *sample* is a plain dict with the keys below (constants, so Ray batches and the readers agree):
``image`` (a local path or ``s3://`` URI, ``""`` when the bytes are inline), ``image_bytes`` (encoded
bytes or ``b""``), ``captions`` (list of strings), ``label`` (class name, ``""`` if unknown), ``split``
(``train``/``val``/``test``; rows without one count as ``train``) and ``name`` (for messages, and the
key of the sample's random views: :mod:`rsclip.train.seeds`).

Sources (local or ``s3://``, read through :mod:`rsclip.runtime.storage`):
- RSICD: ``dataset_rsicd.json`` (``images[].filename``, ``split``, ``sentences[].raw``) with the images in
  ``RSICD_images/`` (or ``images/``, or the JSON's own folder). A URI may name the folder or the JSON.
  The label is the file-name prefix (``airport_17.jpg`` -> ``airport``), as in the RSICD protocol.
- Manifests: Parquet, CSV or JSONL (``.jsonl``/``.ndjson``) with an image path (relative paths are read
  beside the manifest) or encoded image bytes, captions as a list or one string, optional label and split.

Decoding and augmentation are :mod:`rsclip.train.transforms`.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import PurePosixPath
from typing import Any, Iterable, Sequence

import numpy as np

from rsclip.runtime import storage
from rsclip.model.prompts import class_from_filename
from rsclip.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

# Sample and batch keys.
IMAGE = "image"  # sample: path/URI; decoded batch: uint8 (B, S, S, 3)
IMAGE_BYTES = "image_bytes"
CAPTIONS = "captions"
CAPTION = "caption"  # the one caption a training row is paired with this time
LABEL = "label"
SPLIT = "split"
NAME = "name"
OK = "ok"  # decoded batch: False where the image could not be decoded

TRAIN, VAL, TEST = "train", "val", "test"
RSICD_JSON = "dataset_rsicd.json"
RSICD_IMAGE_DIRS = ("RSICD_images", "images")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")

# Manifest column names accepted for each field, in order of preference.
IMAGE_COLUMNS = ("image", "image_path", "image_uri", "path", "filepath", "filename", "uri")
BYTES_COLUMNS = ("image_bytes", "bytes", "image_data")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "texts", "title")
LABEL_COLUMNS = ("label", "class", "class_name", "category")


def _sample(image: str = "", image_bytes: bytes = b"", captions: Sequence[str] = (), label: str = "",
            split: str = "", name: str = "") -> dict[str, Any]:
    return {
        IMAGE: image, IMAGE_BYTES: image_bytes, CAPTIONS: [str(c) for c in captions],
        LABEL: label or "", SPLIT: split or TRAIN, NAME: name or image,
    }


def read_rsicd(uri: str) -> list[dict[str, Any]]:
    """Samples of an RSICD-format dataset; ``uri`` is the folder holding ``dataset_rsicd.json`` or the JSON.

    Raises :class:`NotFound` when no JSON is found, :class:`InvalidInput` when it is not an RSICD caption file
    (no ``images`` list, an entry without a plain file name).
    """
    uri = str(uri).rstrip("/")
    json_uri = uri if uri.endswith(".json") else f"{uri}/{RSICD_JSON}"
    try:
        doc = json.loads(storage.read_bytes(json_uri))
    except NotFound as exc:
        raise NotFound(f"no RSICD dataset at {uri}: {exc}") from None
    except ValueError as exc:  # not JSON, not UTF-8, over the size limit
        raise InvalidInput(f"no RSICD dataset at {uri}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InvalidInput(f"{json_uri} is not an RSICD caption file (no 'images' list)")
    folder = storage.parent(json_uri)
    image_dir = next((f"{folder}/{d}" for d in RSICD_IMAGE_DIRS if storage.isdir(f"{folder}/{d}")), folder)
    return [_rsicd_sample(entry, image_dir, json_uri) for entry in doc["images"]]


def _rsicd_sample(entry: Any, image_dir: str, json_uri: str) -> dict[str, Any]:
    name = entry.get("filename") if isinstance(entry, dict) else None
    # a file name of the image folder, never a path: the caption file must not send reads elsewhere
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInput(f"{json_uri}: an entry of 'images' has no plain 'filename': {str(entry)[:200]}")
    sentences = entry.get("sentences") if isinstance(entry.get("sentences"), list) else []
    raw = [str(s.get("raw") or "").strip() for s in sentences if isinstance(s, dict)]
    return _sample(image=storage.join(image_dir, name), captions=[c for c in raw if c], label=class_from_filename(name),
                   split=str(entry.get("split") or TRAIN), name=name)


def _manifest_frame(uri: str):
    import pandas as pd

    data = storage.read_bytes(uri)
    suffix = PurePosixPath(uri).suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(data))
        if suffix == ".csv":
            return pd.read_csv(io.BytesIO(data), keep_default_na=False)
        return pd.read_json(io.BytesIO(data), lines=True)
    except Exception as exc:  # pyarrow, the CSV and the JSON parsers each raise their own kinds
        raise InvalidInput(f"{uri}: not a readable {suffix} manifest ({type(exc).__name__}: {exc})") from None


def _as_captions(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # a list written into a CSV cell as JSON
            try:
                return _as_captions(json.loads(text))
            except json.JSONDecodeError:
                pass
        return [text] if text else []
    if isinstance(value, dict):  # RSICD-style sentence objects
        return _as_captions(value.get("raw") or value.get("text"))
    if isinstance(value, (list, tuple, np.ndarray)):
        return [c for v in value for c in _as_captions(v)]
    return []


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """Samples of a Parquet/CSV/JSONL manifest. Relative image paths are resolved beside the manifest.

    Raises :class:`InvalidInput` when the manifest cannot be parsed or has no image (path or bytes) column or no
    caption column.
    """
    uri = str(uri)
    frame = _manifest_frame(uri)
    cols = set(frame.columns)
    image_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    bytes_col = next((c for c in BYTES_COLUMNS if c in cols), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
    label_col = next((c for c in LABEL_COLUMNS if c in cols), None)
    if image_col is None and bytes_col is None:
        raise InvalidInput(f"{uri}: no image column (one of {IMAGE_COLUMNS + BYTES_COLUMNS})")
    if caption_col is None:
        raise InvalidInput(f"{uri}: no caption column (one of {CAPTION_COLUMNS})")
    base = storage.parent(uri)
    samples = []
    for i, row in enumerate(frame.to_dict("records")):
        image, data, name = "", b"", f"{uri}#{i}"
        value = row.get(image_col) if image_col else None
        if isinstance(value, dict):  # Hugging Face image struct {"bytes", "path"}
            data, value = value.get("bytes") or b"", value.get("path") or ""
        if isinstance(value, (bytes, bytearray)):
            data, value = bytes(value), ""
        if bytes_col and isinstance(row.get(bytes_col), (bytes, bytearray)) and row.get(bytes_col):
            data = bytes(row[bytes_col])
        if isinstance(value, str) and value:
            name = value
            if not data:
                image = storage.join(base, value)
        label = row.get(label_col) if label_col else ""
        label = str(label) if label is not None and label == label else ""
        split = row.get(SPLIT) if SPLIT in cols else TRAIN
        samples.append(_sample(
            image=image, image_bytes=data, captions=_as_captions(row.get(caption_col)), label=label,
            split=str(split or TRAIN), name=name,
        ))
    return samples


def read_source(uri: str) -> list[dict[str, Any]]:
    """Samples of one source: an RSICD folder or JSON, or a manifest (by its suffix).

    Raises :class:`InvalidInput` for anything else."""
    text = str(uri).rstrip("/")
    if text.lower().endswith(MANIFEST_SUFFIXES):
        return read_manifest(text)
    if text.endswith(".json") or storage.exists(f"{text}/{RSICD_JSON}"):
        return read_rsicd(text)
    raise InvalidInput(
        f"{uri}: not a dataset (expected a folder with {RSICD_JSON}, an RSICD JSON, or a "
        f"{'/'.join(MANIFEST_SUFFIXES)} manifest)"
    )


def read_samples(uris: Iterable[str], split: str | None = None) -> list[dict[str, Any]]:
    """Samples of several sources combined, optionally only one split; rows without captions are dropped.

    Raises :class:`InvalidInput` (or its ``NotFound``) for an unreadable source.
    """
    samples: list[dict[str, Any]] = []
    for uri in uris:
        rows = read_source(uri)
        kept = [s for s in rows if s[CAPTIONS] and (split is None or s[SPLIT] == split)]
        dropped = sum(1 for s in rows if not s[CAPTIONS])
        if dropped:
            log.warning("%s: %d rows without captions skipped", uri, dropped)
        samples.extend(kept)
    return samples


def class_names(samples: Sequence[dict[str, Any]]) -> list[str]:
    """Sorted distinct non-empty labels of ``samples``."""
    return sorted({s[LABEL] for s in samples if s[LABEL]})
