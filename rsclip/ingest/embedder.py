"""The mapper of the embedding pipeline: :class:`ImageEmbedder`, a callable class on a read batch.

It loads the model once per actor (fp16 on GPU), works with or without Ray, and adds ``vector`` to the
batch: rows whose status is ``ready`` are embedded, the rest get zeros and keep their status.

A model that cannot embed (weights other than those the job recorded, weights that do not load, a batch
that raises, embeddings that are not finite) makes its rows ``error`` at stage ``embed`` instead of
killing the actor: the writer stops the job with one clear line after a few such batches
(:class:`~rsclip.ingest.writer.EmbeddingBroken`).
"""

from __future__ import annotations

import numpy as np

from rsclip.table import tiles
from rsclip.model.clip import load_model, load_pretrained
from rsclip.model.sources import model_identity
from rsclip.model.preprocess import ImagePreprocess
from rsclip.errors import ModelMismatch
from rsclip.ingest.batch import (EMBED_BATCH, EMBED_BATCH_FAILED, EMBED_BATCH_OK, EMBEDDED, ERROR, MAX_MESSAGE_CHARS,
                                 MESSAGE, PIXELS, READY, STAGE, STAGE_EMBED, STATUS, batch_images)


def model_spec(source: str) -> tuple[int, ImagePreprocess]:
    """``(embedding size, image preprocessing)`` of a model without loading its weights.

    Raises :class:`~rsclip.errors.NotFound` when the model cannot be found.
    """
    from transformers import CLIPConfig

    config, preprocess = load_pretrained(source, CLIPConfig.from_pretrained)
    return int(config.projection_dim), preprocess


class ImageEmbedder:
    """Mapper: adds ``vector`` (float32 ``(N, D)``, unit rows) to a read batch; rows whose status is
    ``ready`` are embedded (status ``embedded``), others get zeros and keep their status.

    Callable on a plain batch dict (``batch.READ_COLUMNS``), with or without Ray. The model is loaded once
    in ``__init__``; on CUDA it runs in half precision. ``pixels`` is dropped from the output.
    The first row the model saw gets :data:`~rsclip.ingest.batch.EMBED_BATCH` (did this batch embed anything?).
    ``weights_sha256`` (the job's record of the weights, :func:`~rsclip.model.sources.model_identity`)
    is checked before loading: a folder re-exported since the job started, or another copy on this node,
    embeds nothing. ``dim`` is the embedding size the table holds (default: the model's; then a model that
    does not load raises here).
    """

    def __init__(self, model: str, *, dim: int | None = None, device: str | None = None,
                 torch_threads: int | None = None, weights_sha256: str | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.dim = int(dim or 0)
        self.encoder = None
        self.failure = ""
        try:
            have = model_identity(model) if weights_sha256 else None
            if have is not None and have.weights_sha256 != weights_sha256:
                raise ModelMismatch(f"the weights of {model} at {have.location} changed since the job started "
                                    f"(sha256 {have.weights_sha256[:12]}, the job recorded {weights_sha256[:12]})")
            self.encoder = load_model(model, device=device)
            self.dim = self.dim or self.encoder.dim
            if self.encoder.dim != self.dim:
                raise ModelMismatch(f"{model} gives {self.encoder.dim}-d embeddings, the job expects {self.dim}-d")
        except Exception as exc:  # reported on every batch: the writer stops the job with this line
            if not self.dim:
                raise
            self.encoder, self.failure = None, f"cannot embed with {model}: {type(exc).__name__}: {exc}"

    def _embed(self, batch: dict[str, np.ndarray], ready: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """Vectors of rows ``ready``, which of them are usable (finite), and the failure message for the rest."""
        if self.encoder is None:
            return np.zeros((len(ready), self.dim), np.float32), np.zeros(len(ready), bool), self.failure
        try:
            vectors = self.encoder.encode_images(batch_images(batch, ready), batch_size=len(ready))
        except Exception as exc:  # a whole batch failed to embed: record it, keep the job going
            return np.zeros((len(ready), self.dim), np.float32), np.zeros(len(ready), bool), \
                f"{type(exc).__name__}: {exc}"
        finite = np.isfinite(vectors).all(axis=1)
        return np.where(finite[:, None], vectors, 0.0), finite, "the model gave a non-finite embedding (NaN or inf)"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.asarray(batch[STATUS]).astype(object)
        n = len(status)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        outcome = np.zeros(n, dtype=np.int8)
        ready = np.flatnonzero(status == READY)
        stage, message = np.asarray(batch[STAGE]).astype(object), np.asarray(batch[MESSAGE]).astype(object)
        if len(ready):
            got, ok, failure = self._embed(batch, ready)
            vectors[ready] = got
            status[ready[ok]] = EMBEDDED
            bad = ready[~ok]
            status[bad], stage[bad] = ERROR, STAGE_EMBED
            message[bad] = [f"{batch[tiles.URI][i]}: {failure}"[:MAX_MESSAGE_CHARS] for i in bad]
            outcome[ready[0]] = EMBED_BATCH_OK if ok.any() else EMBED_BATCH_FAILED
        out = {k: v for k, v in batch.items() if k != PIXELS}
        out.update({STATUS: status, STAGE: stage, MESSAGE: message, tiles.VECTOR: vectors, EMBED_BATCH: outcome})
        return out
