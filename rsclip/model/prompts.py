"""Prompt templates for zero-shot scene classification, and the class text embeddings built from them.

Shared by the evaluation and ``rsclip.classify``, so a user's labels are scored exactly as the evaluation scores
them."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Sequence

import numpy as np

from rsclip.model.vectors import unit

# The seed's (CLIP-RSICD) single prompt: its zero-shot top-k numbers are measured with this one.
SEED_TEMPLATE = "an aerial photograph of {}"

# An ensemble in the style of CLIP's ImageNet templates, worded for overhead imagery.
TEMPLATES = (
    "an aerial photograph of {}",
    "a satellite image of {}",
    "a remote sensing image of {}",
    "an overhead view of {}",
    "a high resolution satellite photo of {}",
    "an aerial image showing {}",
    "a top-down photo of {}",
    "a low resolution satellite image of {}",
)


def class_from_filename(name: str) -> str:
    """The RSICD class of an image file: the file-name prefix, ``airport_17.jpg`` -> ``airport``."""
    stem = PurePosixPath(str(name)).stem
    return re.sub(r"_\d+$", "", stem) if re.search(r"_\d+$", stem) else stem


def prompts_for(label: str, templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Each template filled with ``label`` (underscores read as spaces)."""
    return [t.format(label.replace("_", " ")) for t in templates]


def class_embeddings(encoder, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """``(C, D)`` unit class embeddings: the mean of each class's normalised prompt embeddings, renormalised
    (CLIP's ImageNet recipe). With the seed's single template the class name is used as is."""
    if tuple(templates) == (SEED_TEMPLATE,):  # the seed's protocol: the class name as is
        return unit(encoder.encode_texts([SEED_TEMPLATE.format(n) for n in names]))
    prompts = [p for n in names for p in prompts_for(n, tuple(templates))]
    emb = unit(encoder.encode_texts(prompts)).reshape(len(names), len(templates), -1)  # (C, T, D)
    return unit(emb.mean(axis=1))
