"""Prompt templates for zero-shot scene classification, shared by evaluation and ``rsclip.classify``."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

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
