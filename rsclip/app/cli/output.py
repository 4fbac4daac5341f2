"""What the ``rsclip`` commands print: tables for people, JSON for scripts (``--json``), and nothing else on
stderr while a model loads (stderr is for errors)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd


def records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN, NaT, NA, infinities and None become null)."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if pd.api.types.is_scalar(v) and pd.isna(v):  # NaN, NaT (an unknown date), NA, None
                v = None
            elif isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
                v = None
            elif isinstance(v, np.generic):
                v = v.item()
            clean[k] = v
        out.append(clean)
    return out


def print_json(obj: Any) -> None:
    """``obj`` as one line of JSON on stdout (values JSON does not know written as text)."""
    print(json.dumps(obj, indent=None, default=str))


def print_table(frame: pd.DataFrame, floats: str = "{:.4f}") -> None:
    """``frame`` as a plain-text table on stdout (``(no results)`` when empty)."""
    if frame.empty:
        print("(no results)")
        return
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(frame.to_string(index=False, float_format=floats.format, na_rep="-"))


def say(args, record: dict, text: str) -> None:
    """``record`` as JSON when the command was given ``--json``, else the sentence ``text``."""
    print_json(record) if args.json else print(text)


def quiet_model_loading() -> None:
    """No progress bars from transformers while a model loads: stderr is for errors."""
    from transformers.utils import logging as hf_logging  # half a second to import: only when a model loads

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
