"""The mapper of the embedding pipeline: :class:`ImageEmbedder`, a callable class on a read batch.

It loads the model once per actor (fp16 on GPU), works with or without Ray, and adds ``vector`` to the
batch: rows whose status is ``ready`` are embedded, the rest get zeros and keep their status.
"""

from __future__ import annotations

import numpy as np

from rsclip.core import tiles
from rsclip.core.model import load_model
from rsclip.core.model_source import resolve_model_source
from rsclip.core.preprocess import ImagePreprocess
from rsclip.errors import NotFound
from rsclip.ingest.batch import EMBEDDED, ERROR, MESSAGE, PIXELS, READY, STAGE, STAGE_EMBED, STATUS, batch_images


def model_spec(source: str) -> tuple[int, ImagePreprocess]:
    """``(embedding size, image preprocessing)`` of a model without loading its weights.

    Raises :class:`~rsclip.errors.NotFound` when the model cannot be found.
    """
    from transformers import AutoImageProcessor, CLIPConfig

    path = resolve_model_source(source)
    try:
        config = CLIPConfig.from_pretrained(path)
        processor = AutoImageProcessor.from_pretrained(path)
    except OSError as exc:
        raise NotFound(f"cannot load CLIP model {source}: {exc}") from exc
    return int(config.projection_dim), ImagePreprocess.from_processor(processor)


class ImageEmbedder:
    """Mapper: adds ``vector`` (float32 ``(N, D)``, unit rows) to a read batch; rows whose status is
    ``ready`` are embedded (status ``embedded``), others get zeros and keep their status.

    Callable on a plain batch dict (``batch.READ_COLUMNS``), with or without Ray. The model is loaded once
    in ``__init__``; on CUDA it runs in half precision. ``pixels`` is dropped from the output.
    """

    def __init__(self, model: str, *, device: str | None = None, torch_threads: int | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.encoder = load_model(model, device=device)
        self.dim = self.encoder.dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.asarray(batch[STATUS]).astype(object)
        n = len(status)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ready = np.flatnonzero(status == READY)
        stage, message = np.asarray(batch[STAGE]).copy(), np.asarray(batch[MESSAGE]).copy()
        if len(ready):
            try:
                vectors[ready] = self.encoder.encode_images(batch_images(batch, ready),
                                                            batch_size=len(ready))
                status[ready] = EMBEDDED
            except Exception as exc:  # a whole batch failed to embed: record it, keep the job going
                status[ready] = ERROR
                stage[ready] = STAGE_EMBED
                message[ready] = f"{type(exc).__name__}: {exc}"
        out = {k: v for k, v in batch.items() if k != PIXELS}
        out.update({STATUS: status, STAGE: stage, MESSAGE: message,
                    tiles.VECTOR: vectors})
        return out
