"""The CLIP loader and encoder: models from the hub, a ``save_pretrained`` folder or ``s3://``, on one device.

``load_model`` returns a :class:`ClipEncoder`, which turns images and texts into float32, L2-normalised
embeddings. Image preprocessing reproduces ``CLIPImageProcessor`` (resize the shortest side, bicubic; centre
crop; rescale to [0, 1]; normalise with the processor's mean and std) in torch on the model's device, so a
GPU host receives uint8 pixels, not float tensors.
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from typing import Callable, Sequence, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rsclip.geo.images import to_hwc_uint8
from rsclip.model.sources import DEFAULT_MODEL, resolve_model_source
from rsclip.model.preprocess import ImagePreprocess, crop_box, resize_shortest_side
from rsclip.errors import InvalidInput, NotFound

ImageLike = Union[np.ndarray, Image.Image, torch.Tensor]
T = TypeVar("T")


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


def normalize_pixels(pixels, preprocess: ImagePreprocess, device=None, channels_last: bool = False) -> torch.Tensor:
    """Pixel values in [0, 255] (a tensor or array, ``(B, 3, H, W)``, or ``(B, H, W, 3)`` with
    ``channels_last``) as float32 ``(B, 3, H, W)`` normalised with the model's mean and std."""
    x = torch.as_tensor(pixels)
    if device is not None:
        x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    x = x.float() / 255.0  # (B, 3, H, W) in [0, 1]
    mean = torch.tensor(preprocess.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


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
            raise InvalidInput("no images to preprocess")
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
        return normalize_pixels(out, cfg)

    def _crop(self, batch: torch.Tensor) -> torch.Tensor:
        """Centre crop ``(B, C, H, W)`` to the crop size as :func:`rsclip.model.preprocess.crop_box` says."""
        ch, cw = self.preprocess_config.crop_height, self.preprocess_config.crop_width
        (top_pad, bottom_pad, left_pad, right_pad), top, left = crop_box(*batch.shape[-2:], ch, cw)
        if top_pad or bottom_pad or left_pad or right_pad:
            batch = F.pad(batch, (left_pad, right_pad, top_pad, bottom_pad))
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
        """Float32 ``(N, D)`` unit-length embeddings of strings. Raises ``InvalidInput`` for blank texts."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidInput(f"text queries must be non-empty strings, got {t!r}")
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


def load_pretrained(source: str | os.PathLike, read: Callable[[str], T]) -> tuple[T, ImagePreprocess]:
    """``read(path)`` of the folder or hub id ``source`` resolves to, and the model's image preprocessing.

    ``read`` opens what the caller needs with transformers' ``from_pretrained`` (the weights and tokenizer,
    or the config alone); the image processor is read here. Raises :class:`~rsclip.errors.NotFound` naming
    ``source`` when transformers cannot open them, as :func:`resolve_model_source` raises for a bad location.
    """
    from transformers import AutoImageProcessor

    path = resolve_model_source(source)
    try:
        loaded = read(path)
        processor = AutoImageProcessor.from_pretrained(path)
    except OSError as exc:
        raise NotFound(f"cannot load CLIP model {source}: {exc}") from exc
    return loaded, ImagePreprocess.from_processor(processor)


def load_model(source: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None) -> ClipEncoder:
    """Load a CLIP model from a hub id, a local ``save_pretrained`` folder or an ``s3://`` prefix.

    Weights are read from safetensors only and no remote code is run. ``device`` defaults to CUDA when
    available; on CUDA the model runs in half precision. Raises :class:`~rsclip.errors.NotFound` for a
    missing model and :class:`~rsclip.errors.InvalidInput` for an invalid model location.
    """
    from transformers import AutoTokenizer, CLIPModel

    device = device or default_device()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    (model, tokenizer), preprocess = load_pretrained(
        source, lambda path: (CLIPModel.from_pretrained(path, use_safetensors=True, dtype=dtype),
                              AutoTokenizer.from_pretrained(path)))
    model.to(device)
    return ClipEncoder(model, tokenizer, preprocess, source=str(source), device=device)


@functools.lru_cache(maxsize=4)
def cached_model(source: str, device: str | None = None) -> ClipEncoder:
    """``load_model`` memoised per process, for queries that reuse the table's model."""
    return load_model(source, device=device)
