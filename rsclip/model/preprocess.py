"""CLIP's image preprocessing, written once: its numbers, the shortest-side resize and the centre crop.

Decode stages (Ray tasks that read and resize tiles, the training data's decode tasks) use the numpy/Pillow
functions here and import neither torch nor LanceDB; :class:`rsclip.model.clip.ClipEncoder` applies the same
crop geometry (:func:`crop_box`) and normalisation to tensors on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImagePreprocess:
    """The numbers of a CLIP image processor: shortest-side resize, centre crop, normalisation."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_dict(cls, data: dict) -> "ImagePreprocess":
        """Rebuild from ``asdict`` output (lists back to tuples), e.g. inside a Ray task."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_processor(cls, processor) -> "ImagePreprocess":
        """Read the settings of a Hugging Face CLIP image processor."""
        size = processor.size
        size = size if isinstance(size, dict) else size.__dict__
        crop = processor.crop_size
        crop = crop if isinstance(crop, dict) else crop.__dict__
        shortest = size.get("shortest_edge") or min(size["height"], size["width"])
        return cls(
            shortest_edge=int(shortest),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            mean=tuple(float(v) for v in processor.image_mean),
            std=tuple(float(v) for v in processor.image_std),
        )

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """Output (height, width) of the shortest-side resize, rounded as transformers rounds it."""
        if height <= width:
            return self.shortest_edge, int(self.shortest_edge * width / height)
        return int(self.shortest_edge * height / width), self.shortest_edge


def resize_shortest_side(image: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """A uint8 HWC array resized (bicubic) so its shortest side is ``preprocess.shortest_edge``.

    Uses Pillow, the reference CLIP processors resize with, so the result is theirs pixel for pixel. Decode
    stages on CPU call this so that only small uint8 arrays travel to the embedder.
    """
    h, w = image.shape[:2]
    nh, nw = preprocess.resized_shape(h, w)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))


def crop_box(height: int, width: int, crop_height: int, crop_width: int) -> tuple[tuple[int, int, int, int], int, int]:
    """How ``CLIPImageProcessor`` centre-crops a ``height`` x ``width`` image to the crop size:
    ``((pad_top, pad_bottom, pad_left, pad_right), top, left)``, zero padding first when the image is smaller,
    then the crop's top-left corner in the padded image."""
    pad_h, pad_w = max(crop_height - height, 0), max(crop_width - width, 0)
    pads = (pad_h // 2, (pad_h + 1) // 2, pad_w // 2, (pad_w + 1) // 2)
    h, w = height + pad_h, width + pad_w
    return pads, int((h - crop_height) / 2.0), int((w - crop_width) / 2.0)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop an ``(H, W, 3)`` array to ``height`` x ``width`` as :func:`crop_box` says."""
    (top_pad, bottom_pad, left_pad, right_pad), top, left = crop_box(*image.shape[:2], height, width)
    if top_pad or bottom_pad or left_pad or right_pad:
        image = np.pad(image, ((top_pad, bottom_pad), (left_pad, right_pad), (0, 0)))
    return image[top : top + height, left : left + width]


def prepare_image(image: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """The model's deterministic preprocessing up to normalisation: shortest-side resize, centre crop.

    Bit-identical to the uint8 pixels :class:`rsclip.model.clip.ClipEncoder` feeds its model on CPU.
    """
    resized = resize_shortest_side(image, preprocess)
    return np.ascontiguousarray(center_crop(resized, preprocess.crop_height, preprocess.crop_width))
