"""CLIP models: loading from the hub, a local ``save_pretrained`` directory or ``s3://``, and encoding.

``load_model`` returns a :class:`ClipEncoder`, which turns images and texts into float32, L2-normalised
embeddings. Image preprocessing reproduces ``CLIPImageProcessor`` (resize the shortest side, bicubic; centre
crop; rescale to [0, 1]; normalise with the processor's mean and std) in torch on the model's device, so a
GPU host receives uint8 pixels, not float tensors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rsclip import storage
from rsclip.preprocess import ImagePreprocess, resize_shortest_side

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
CACHE_DIR = Path.home() / ".cache" / "rsclip" / "models"
# Files a save_pretrained CLIP directory needs; weights only as safetensors (no pickle is ever loaded).
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model")

ImageLike = Union[np.ndarray, Image.Image, torch.Tensor]


def to_hwc_uint8(image: ImageLike) -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 array from a PIL image or an array (HW grey, HWC with 1, 3 or 4 bands).

    Raises ``ValueError`` for other shapes, non-uint8 arrays and images smaller than 2x2.
    """
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(f"expected an image array or PIL image, got {type(image).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 HWC, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"image is too small to embed: {array.shape[1]}x{array.shape[0]} pixels")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return array


def uint8_to_device(images: Sequence[np.ndarray], device) -> torch.Tensor:
    """Equal-shaped uint8 arrays stacked into one tensor on ``device``.

    For a GPU they are stacked straight into page-locked memory (PyTorch's caching host allocator) and copied
    asynchronously: one host copy instead of a stack plus a staging copy. On an H200 this made the embedder
    1.45x faster at batch 256 (BENCHMARKS.md, GPU); an already stacked array gains nothing from it.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return torch.from_numpy(np.stack(images)).to(device)
    host = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
    np.stack(images, out=host.numpy())
    return host.to(device, non_blocking=True)


def _resize_on_device(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Pillow resizes in two passes, horizontal then vertical, rounding to uint8 after each; antialias=True
    # gives its bicubic kernel (a=-0.5, support widened when shrinking). Pillow picks the pass order itself
    # for some shapes, so sharp edges can differ by a few grey levels; the mean difference stays far below one.
    for size in ((batch.shape[-2], width), (height, width)):
        if tuple(batch.shape[-2:]) != size:
            batch = F.interpolate(batch, size=size, mode="bicubic", antialias=True, align_corners=False)
            batch = batch.round_().clamp_(0, 255)
    return batch


class ClipEncoder:
    """A CLIP model with its tokenizer and image preprocessing, on one device.

    ``encode_images`` and ``encode_texts`` return float32 ``(N, D)`` rows of unit length.
    """

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, *, source: str, device: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess
        self.source = source
        self.device = torch.device(device)
        self.dim = int(model.config.projection_dim)
        self.max_text_length = int(model.config.text_config.max_position_embeddings)
        self.dtype = next(model.parameters()).dtype
        cfg = preprocess
        self._mean = torch.tensor(cfg.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, device=self.device).view(1, 3, 1, 1)

    def _autocast(self):
        # weights already in half precision (load_model on CUDA) run as they are: autocast would re-cast
        # them on every op; a full-precision model on a GPU (the training loop's evaluation) runs under it
        if self.device.type == "cuda" and self.dtype == torch.float32:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def preprocess(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Pixel values ``(N, 3, crop_h, crop_w)`` float32 on the model's device.

        Sizes may differ within a batch. On CPU the shortest-side resize is Pillow's own (identical to
        ``CLIPImageProcessor``); on a GPU it runs in torch on the device (close to Pillow, see ``_resize_on_device``),
        so only uint8 pixels cross the bus. Arrays already at the resized shape, as the embedding job's decode
        stage leaves them (:func:`resize_shortest_side`), are only cropped and normalised.
        """
        arrays = [to_hwc_uint8(im) for im in images]
        if not arrays:
            raise ValueError("no images to preprocess")
        cfg = self.preprocess_config
        out = torch.empty((len(arrays), 3, cfg.crop_height, cfg.crop_width), device=self.device)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape[:2], []).append(i)
        on_cpu = self.device.type == "cpu"
        for (h, w), idx in by_shape.items():
            group = [arrays[i] for i in idx]
            nh, nw = cfg.resized_shape(h, w)
            if on_cpu:  # Pillow's own resize is exact and fast on CPU; on GPU the pixels move as uint8
                group = [resize_shortest_side(a, cfg) for a in group]
            batch = uint8_to_device(group, self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
            if tuple(batch.shape[-2:]) != (nh, nw):
                batch = _resize_on_device(batch, nh, nw)
            out[idx] = self._crop(batch)
        return ((out / 255.0) - self._mean) / self._std

    def _crop(self, batch: torch.Tensor) -> torch.Tensor:
        """Centre crop ``(B, C, H, W)`` to the crop size, zero-padding first if smaller (as transformers)."""
        cfg = self.preprocess_config
        nh, nw = batch.shape[-2:]
        ch, cw = cfg.crop_height, cfg.crop_width
        if nh < ch or nw < cw:
            pad_w, pad_h = max(cw - nw, 0), max(ch - nh, 0)
            batch = F.pad(batch, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            nh, nw = batch.shape[-2:]
        top, left = int((nh - ch) / 2.0), int((nw - cw) / 2.0)
        return batch[:, :, top : top + ch, left : left + cw]

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embeddings for already preprocessed pixel values ``(N, 3, H, W)``."""
        with self._autocast():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.dtype))
        feats = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
        return F.normalize(feats.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: Sequence[ImageLike], batch_size: int = 64) -> np.ndarray:
        """Float32 ``(N, D)`` unit-length embeddings of uint8 HWC arrays or PIL images."""
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self.encode_pixels(self.preprocess(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Float32 ``(N, D)`` unit-length embeddings of strings. Raises ``ValueError`` for blank texts."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text queries must be non-empty strings, got {t!r}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            ).to(self.device)
            with self._autocast():
                out = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            feats = getattr(out, "pooler_output", out)
            parts.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def fetch_model_dir(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Copy the model files under an ``s3://`` prefix into the local cache, once, and return the folder.

    The cache key covers the URI and the listing (names, sizes, ETags), so a model overwritten in place is
    fetched again. Raises ``ValueError`` when the prefix holds no ``config.json`` or no safetensors.
    """
    fs, root = storage.filesystem(uri)
    try:
        listing = fs.find(root, detail=True)
    except FileNotFoundError:
        listing = {}
    files = {
        path: info for path, info in listing.items()
        if info.get("type", "file") == "file" and path.endswith(MODEL_FILE_SUFFIXES)
    }
    names = {p[len(root):].lstrip("/") for p in files}
    if "config.json" not in names:
        raise ValueError(f"no CLIP model at {uri}: config.json not found")
    if not any(n.endswith(".safetensors") for n in names):
        raise ValueError(f"no safetensors weights at {uri} (only safetensors are loaded)")
    key = hashlib.sha256(uri.encode())
    for path in sorted(files):
        info = files[path]
        key.update(f"{path}|{info.get('size')}|{info.get('ETag') or info.get('etag')}".encode())
    target = Path(cache_dir or CACHE_DIR) / key.hexdigest()[:24]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    try:
        for path in files:
            dest = staging / path[len(root):].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(dest))
        try:
            staging.rename(target)  # atomic: a folder at ``target`` is always complete
        except OSError:
            if not target.is_dir():  # lost a race to another process fetching the same model
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_source(source: str | os.PathLike) -> str:
    """A local folder or hub id that ``from_pretrained`` accepts, fetching ``s3://`` models first."""
    text = str(source)
    if storage.is_remote(text):
        return str(fetch_model_dir(text))
    path = storage.local_path(text)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{text} is not a save_pretrained CLIP directory (no config.json)")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"model directory not found: {text}")
    return text  # a hub id such as openai/clip-vit-base-patch32


def load_model(source: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None) -> ClipEncoder:
    """Load a CLIP model from a hub id, a local ``save_pretrained`` folder or an ``s3://`` prefix.

    Weights are read from safetensors only and no remote code is run. ``device`` defaults to CUDA when
    available; on CUDA the model runs in half precision. Raises ``ValueError`` for a missing or invalid
    model location.
    """
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    device = device or default_device()
    path = resolve_model_source(source)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        model = CLIPModel.from_pretrained(path, use_safetensors=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        processor = AutoImageProcessor.from_pretrained(path)
    except OSError as exc:
        raise ValueError(f"cannot load CLIP model {source!s}: {exc}") from exc
    model.to(device)
    return ClipEncoder(
        model, tokenizer, ImagePreprocess.from_processor(processor), source=str(source), device=device
    )


@functools.lru_cache(maxsize=4)
def cached_model(source: str, device: str | None = None) -> ClipEncoder:
    """``load_model`` memoised per process, for queries that reuse the table's model."""
    return load_model(source, device=device)
