"""Zero-shot scene labels: ``rsclip.classify(images, labels)`` with prompt-template ensembles.

A label's text embedding is the mean of its normalised prompt embeddings over the templates, renormalised
(CLIP's ImageNet recipe); this is :func:`rsclip.model.prompts.class_embeddings`, so the labels a user gets are
scored exactly as the evaluation scores them. Probabilities are ``softmax(logit_scale * cosine)`` over the
labels, where ``logit_scale`` is the model's own learned temperature (``exp(model.logit_scale)``, 100 for
OpenAI CLIP, whatever fine-tuning learned otherwise) unless given.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from rsclip.geo.images import ImageInput, read_image
from rsclip.model.clip import DEFAULT_MODEL, ClipEncoder, cached_model
from rsclip.model.prompts import TEMPLATES, class_embeddings
from rsclip.model.vectors import softmax
from rsclip.errors import InvalidInput
from rsclip.search.request import Request
from rsclip.table.tiles import DEFAULT_TABLE

ModelLike = Union[str, os.PathLike, ClipEncoder, None]


def resolve_encoder(model: ModelLike, db=None, table: str = DEFAULT_TABLE) -> ClipEncoder:
    """A :class:`ClipEncoder` for ``model``: an encoder as is, a source (hub id, folder, ``s3://``) loaded
    once per process. None: the model that embedded the tile table ``table`` of ``db`` when ``db`` is given
    (read as :func:`rsclip.query` reads it: :attr:`Request.model <rsclip.search.request.Request.model>`), else
    :data:`rsclip.model.clip.DEFAULT_MODEL`. Raises ``NotFound`` for an unknown table."""
    if isinstance(model, ClipEncoder):
        return model
    if model is None and db is not None:
        model = Request.of(db, table).model
    return cached_model(str(model) if model is not None else DEFAULT_MODEL)


def model_logit_scale(encoder: ClipEncoder) -> float:
    """The model's learned softmax temperature ``exp(logit_scale)`` (CLIP clamps it at 100)."""
    return float(encoder.model.logit_scale.detach().float().exp().clamp(max=100.0).item())


def _as_image(image: ImageInput) -> np.ndarray | Image.Image:
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, (Image.Image, np.ndarray)):
        return image
    raise InvalidInput(f"expected an image path, URI, PIL image or uint8 array, got {type(image).__name__}")


def classify(
    images: ImageInput | Sequence[ImageInput],
    labels: Sequence[str],
    *,
    templates: Sequence[str] = TEMPLATES,
    model: ModelLike = None,
    db=None,
    table: str = DEFAULT_TABLE,
    logit_scale: float | None = None,
) -> pd.DataFrame:
    """Zero-shot label probabilities for one image or a list of images.

    Args:
        images: Paths, ``s3://`` URIs, PIL images or HWC uint8 arrays (or one of them).
        labels: Class names (underscores read as spaces), at least two.
        templates: Prompt templates with one ``{}`` (default :data:`rsclip.model.prompts.TEMPLATES`, the
            evaluation's ensemble).
        model: A source (hub id, folder, ``s3://``) or a loaded encoder (None: the model of ``table`` in
            ``db`` when ``db`` is given, else the default model).
        db, table: The tile table whose model classifies when ``model`` is None.
        logit_scale: The softmax's scale (None: the model's own temperature).

    Returns:
        A DataFrame with one row per image and one column per label (probabilities summing to 1 per row),
        indexed 0..N-1, plus ``label`` (the most probable one).

    Raises:
        InvalidInput: For no or duplicate or blank labels, bad templates and unreadable images.
    """
    labels = list(labels) if not isinstance(labels, str) else [labels]
    if len(labels) < 2:
        raise InvalidInput(f"classify needs at least two labels, got {labels!r}")
    if any(not isinstance(lb, str) or not lb.strip() for lb in labels):
        raise InvalidInput(f"labels must be non-empty strings, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise InvalidInput(f"labels must be distinct, got {labels!r}")
    templates = tuple(templates)
    if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
        raise InvalidInput(f"templates must be strings with exactly one '{{}}', got {templates!r}")
    single = isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (2, 3)
        and not (images.ndim == 3 and images.shape[2] not in (1, 3, 4))
    )
    items = [images] if single else list(images)
    if not items:
        raise InvalidInput("no images to classify")
    encoder = resolve_encoder(model, db, table)
    scale = model_logit_scale(encoder) if logit_scale is None else float(logit_scale)
    if not scale > 0:
        raise InvalidInput(f"logit_scale must be positive, got {logit_scale}")
    image_emb = encoder.encode_images([_as_image(im) for im in items])  # (N, D) unit rows
    label_emb = class_embeddings(encoder, labels, templates)  # (C, D) unit rows
    probs = softmax(scale * image_emb.astype(np.float64) @ label_emb.T)  # (N, C)
    frame = pd.DataFrame(probs, columns=labels)
    frame["label"] = [labels[i] for i in probs.argmax(axis=1)]
    return frame
