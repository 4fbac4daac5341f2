"""Captioned training data: readers for the RSICD format and manifests, augmentation, Ray Data stages.

A *sample* is a plain dict with the keys below (constants, so Ray batches and the readers agree):
``image`` (a local path or ``s3://`` URI, ``""`` when the bytes are inline), ``image_bytes`` (encoded
bytes or ``b""``), ``captions`` (list of strings), ``label`` (class name, ``""`` if unknown), ``split``
(``train``/``val``/``test``; rows without one count as ``train``) and ``name`` (for messages).

Sources (local or ``s3://``, read through :mod:`rsclip.storage`):
- RSICD: ``dataset_rsicd.json`` (``images[].filename``, ``split``, ``sentences[].raw``) with the images in
  ``RSICD_images/`` (or ``images/``, or the JSON's own folder). A URI may name the folder or the JSON.
  The label is the file-name prefix (``airport_17.jpg`` -> ``airport``), as in the RSICD protocol.
- Manifests: Parquet, CSV or JSONL (``.jsonl``/``.ndjson``) with an image path (relative paths are read
  beside the manifest) or encoded image bytes, captions as a list or one string, optional label and split.

Decoding and augmentation run in a Ray Data CPU stage (:func:`build_dataset`) that emits fixed-size uint8
``(S, S, 3)`` images; a row whose image cannot be decoded is kept with ``ok=False`` so the training loop
can drop and count it (never fatal).
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from rsclip.core import images, storage
from rsclip.core.preprocess import ImagePreprocess, prepare_image as prepare_model_image
from rsclip.core.prompts import class_from_filename

log = logging.getLogger(__name__)

# Sample and batch keys.
IMAGE = "image"  # sample: path/URI; decoded batch: uint8 (B, S, S, 3)
IMAGE_BYTES = "image_bytes"
CAPTIONS = "captions"
CAPTION = "caption"  # the one caption a training row is paired with this time
LABEL = "label"
SPLIT = "split"
NAME = "name"
OK = "ok"  # False where the image could not be decoded

TRAIN, VAL, TEST = "train", "val", "test"
RSICD_JSON = "dataset_rsicd.json"
RSICD_IMAGE_DIRS = ("RSICD_images", "images")
DECODE_TASK_RETRIES = 2  # attempts after the first for a decode task that raised (see build_dataset)
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")

# Manifest column names accepted for each field, in order of preference.
IMAGE_COLUMNS = ("image", "image_path", "image_uri", "path", "filepath", "filename", "uri")
BYTES_COLUMNS = ("image_bytes", "bytes", "image_data")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text", "texts", "title")
LABEL_COLUMNS = ("label", "class", "class_name", "category")


@dataclass(frozen=True)
class AugmentConfig:
    """Image augmentation for aerial scenes (no canonical "up", so flips and 90 degree turns are free)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5
    rotate90: bool = True
    brightness: float = 0.2  # colour jitter: factors drawn from [1 - j, 1 + j]
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass(frozen=True)
class StageConfig:
    """What the decode stage needs: output size, whether and how to augment, caption choice."""

    height: int = 224
    width: int = 224
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)
    image_aug: bool = True
    text_aug: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    keep_captions: bool = False  # evaluation needs every caption of an image

    @classmethod
    def from_preprocess(cls, preprocess: ImagePreprocess, **kw) -> "StageConfig":
        """A stage whose output size is the model's crop size."""
        return cls(height=preprocess.crop_height, width=preprocess.crop_width, preprocess=preprocess, **kw)


# ---------------------------------------------------------------- readers


def _sample(image: str = "", image_bytes: bytes = b"", captions: Sequence[str] = (), label: str = "",
            split: str = "", name: str = "") -> dict[str, Any]:
    return {
        IMAGE: image, IMAGE_BYTES: image_bytes, CAPTIONS: [str(c) for c in captions],
        LABEL: label or "", SPLIT: split or TRAIN, NAME: name or image,
    }


def read_rsicd(uri: str) -> list[dict[str, Any]]:
    """Samples of an RSICD-format dataset; ``uri`` is the folder holding ``dataset_rsicd.json`` or the JSON.

    Raises ``ValueError`` when no JSON is found or it lacks ``images``.
    """
    uri = str(uri).rstrip("/")
    json_uri = uri if uri.endswith(".json") else f"{uri}/{RSICD_JSON}"
    try:
        doc = json.loads(storage.read_bytes(json_uri))
    except ValueError as exc:
        raise ValueError(f"no RSICD dataset at {uri}: {exc}") from None
    if not isinstance(doc, dict) or "images" not in doc:
        raise ValueError(f"{json_uri} is not an RSICD caption file (no 'images' list)")
    folder = storage.parent(json_uri)
    image_dir = next((f"{folder}/{d}" for d in RSICD_IMAGE_DIRS if storage.isdir(f"{folder}/{d}")), folder)
    samples = []
    for entry in doc["images"]:
        name = entry["filename"]
        captions = [s["raw"].strip() for s in entry.get("sentences", []) if s.get("raw", "").strip()]
        samples.append(_sample(
            image=storage.join(image_dir, name), captions=captions, label=class_from_filename(name),
            split=entry.get("split", TRAIN), name=name,
        ))
    return samples


def _manifest_frame(uri: str):
    import pandas as pd

    data = storage.read_bytes(uri)
    suffix = PurePosixPath(uri).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(data))
    if suffix == ".csv":
        return pd.read_csv(io.BytesIO(data), keep_default_na=False)
    return pd.read_json(io.BytesIO(data), lines=True)


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

    Raises ``ValueError`` when the manifest has no image (path or bytes) column or no caption column.
    """
    uri = str(uri)
    frame = _manifest_frame(uri)
    cols = set(frame.columns)
    image_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    bytes_col = next((c for c in BYTES_COLUMNS if c in cols), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in cols), None)
    label_col = next((c for c in LABEL_COLUMNS if c in cols), None)
    if image_col is None and bytes_col is None:
        raise ValueError(f"{uri}: no image column (one of {IMAGE_COLUMNS + BYTES_COLUMNS})")
    if caption_col is None:
        raise ValueError(f"{uri}: no caption column (one of {CAPTION_COLUMNS})")
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
    """Samples of one source: an RSICD folder or JSON, or a manifest (by its suffix)."""
    text = str(uri).rstrip("/")
    if text.lower().endswith(MANIFEST_SUFFIXES):
        return read_manifest(text)
    if text.endswith(".json") or storage.exists(f"{text}/{RSICD_JSON}"):
        return read_rsicd(text)
    raise ValueError(
        f"{uri}: not a dataset (expected a folder with {RSICD_JSON}, an RSICD JSON, or a "
        f"{'/'.join(MANIFEST_SUFFIXES)} manifest)"
    )


def read_samples(uris: Iterable[str], split: str | None = None) -> list[dict[str, Any]]:
    """Samples of several sources combined, optionally only one split; rows without captions are dropped.

    Raises ``ValueError`` for an unreadable source.
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


# ---------------------------------------------------------------- images


def prepare_image(image: np.ndarray, cfg: StageConfig) -> np.ndarray:
    """The model's deterministic preprocessing up to normalisation (``rsclip.core.preprocess.prepare_image``)."""
    return prepare_model_image(image, cfg.preprocess)


def augment_image(image: np.ndarray, cfg: StageConfig, rng: np.random.Generator) -> np.ndarray:
    """A random training view ``(height, width, 3)`` uint8 of an ``(H, W, 3)`` uint8 image.

    Random resized crop (area ``crop_scale``, aspect ``crop_ratio``, bicubic), horizontal and vertical
    flips, a random multiple of 90 degrees, and brightness/contrast/saturation jitter.
    """
    aug = cfg.augment
    h, w = image.shape[:2]
    for _ in range(10):  # torchvision's RandomResizedCrop sampling, with its centre-crop fallback
        area = h * w * rng.uniform(*aug.crop_scale)
        ratio = float(np.exp(rng.uniform(np.log(aug.crop_ratio[0]), np.log(aug.crop_ratio[1]))))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(image[top : top + ch, left : left + cw])
    out = np.asarray(crop.resize((cfg.width, cfg.height), Image.BICUBIC))
    if rng.random() < aug.hflip:
        out = out[:, ::-1]
    if rng.random() < aug.vflip:
        out = out[::-1]
    if aug.rotate90 and cfg.height == cfg.width:
        out = np.rot90(out, int(rng.integers(0, 4)))
    return jitter_colour(np.ascontiguousarray(out), aug, rng)


def jitter_colour(image: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation scaled by random factors, in random order; uint8 in and out."""
    x = image.astype(np.float32)
    ops = []
    if aug.brightness:
        ops.append(("b", rng.uniform(1 - aug.brightness, 1 + aug.brightness)))
    if aug.contrast:
        ops.append(("c", rng.uniform(1 - aug.contrast, 1 + aug.contrast)))
    if aug.saturation:
        ops.append(("s", rng.uniform(1 - aug.saturation, 1 + aug.saturation)))
    for i in rng.permutation(len(ops)):
        kind, f = ops[i]
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W) luma
        if kind == "b":
            x = x * f
        elif kind == "c":
            x = (x - grey.mean()) * f + grey.mean()
        else:
            x = (x - grey[..., None]) * f + grey[..., None]
        x = np.clip(x, 0, 255)
    return x.round().astype(np.uint8)


def load_image(sample: dict[str, Any]) -> np.ndarray:
    """Decode a sample's image (inline bytes or its URI). Raises ``ValueError`` naming it when unreadable."""
    data = sample.get(IMAGE_BYTES)
    if data is not None and len(data):
        return images.decode_image(bytes(data), str(sample.get(NAME) or "<bytes>"))
    return images.read_image(sample[IMAGE])


def decode_batch(batch: dict[str, np.ndarray], cfg: StageConfig) -> dict[str, np.ndarray]:
    """The Ray Data stage: samples in, ``image`` uint8 ``(B, S, S, 3)``, ``caption``, ``label``, ``ok`` out.

    Unreadable images become zero images with ``ok=False`` (and a warning naming them) so that nothing
    upstream fails; the training loop drops and counts them. With ``keep_captions`` the ``captions``
    lists pass through as JSON strings (evaluation scores every caption of an image).
    """
    n = len(batch[CAPTIONS])
    rng = np.random.default_rng()
    images = np.zeros((n, cfg.height, cfg.width, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    chosen = []
    for i in range(n):
        sample = {k: batch[k][i] for k in (IMAGE, IMAGE_BYTES, NAME)}
        captions = list(batch[CAPTIONS][i])
        chosen.append(str(captions[int(rng.integers(len(captions)))] if cfg.text_aug else captions[0]))
        try:
            raw = load_image(sample)
        except ValueError as exc:
            log.warning("skipping unreadable image: %s", exc)
            continue
        images[i] = augment_image(raw, cfg, rng) if cfg.image_aug else prepare_image(raw, cfg)
        ok[i] = True
    out = {IMAGE: images, CAPTION: np.array(chosen, dtype=object), LABEL: batch[LABEL], OK: ok}
    if cfg.keep_captions:
        out[CAPTIONS] = np.array([json.dumps(list(map(str, c))) for c in batch[CAPTIONS]], dtype=object)
    return out


def build_dataset(samples: Sequence[dict[str, Any]], cfg: StageConfig, *, num_cpus: float = 0.5,
                  batch_size: int = 32):
    """A Ray Dataset that decodes (and, per ``cfg``, augments) ``samples`` in CPU tasks.

    Re-executed each epoch, so every epoch sees fresh augmentations and caption choices; the block
    order is shuffled per epoch. ``num_cpus`` per task is fractional so decode tasks and training
    workers share small nodes.
    """
    import ray.data

    if not samples:
        raise ValueError("no samples to build a dataset from")
    blocks = max(1, min(len(samples) // batch_size, 64))
    ds = ray.data.from_items(list(samples), override_num_blocks=blocks)
    ds = ds.map_batches(decode_batch, fn_kwargs={"cfg": cfg}, batch_size=batch_size, batch_format="numpy",
                        num_cpus=num_cpus)
    # Unreadable images never raise here (they come out with ok=False), so an exception out of a decode task
    # is the store or the process (an S3 timeout, a worker's import race): retry the block before failing
    # the training run. A fault that persists still fails after the last attempt.
    ds.context.retried_map_errors = True
    ds.context.max_map_retries = DECODE_TASK_RETRIES
    return ds


def decode_samples(samples: Sequence[dict[str, Any]], cfg: StageConfig, threads: int = 4
                   ) -> tuple[list[np.ndarray], list[int]]:
    """Deterministically prepared images of ``samples`` without Ray (evaluation), and the skipped indices."""
    def one(sample):
        try:
            return prepare_image(load_image(sample), cfg)
        except ValueError as exc:
            log.warning("skipping unreadable image: %s", exc)
            return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        images = list(pool.map(one, samples))
    skipped = [i for i, im in enumerate(images) if im is None]
    return [im for im in images if im is not None], skipped
