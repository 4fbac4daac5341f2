"""The numbers of CLIP's image preprocessing and its CPU resize, without torch.

Decode stages (Ray tasks that read and resize tiles) import this module and Pillow only, so their worker
processes start without loading torch; :mod:`rsclip.model` finishes the preprocessing on the model's device.
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
