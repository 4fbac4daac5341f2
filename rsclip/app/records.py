"""Result frames as JSON rows: what ``rsclip ... --json`` prints and what the HTTP API answers, one encoding
for both (so a command answered through the API prints what it prints alone)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a frame comes with pandas loaded; the rows of a running service need neither
    import pandas as pd


def records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN, NaT, NA, infinities and None become null)."""
    import numpy as np
    import pandas as pd

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


def dumps(obj: Any) -> str:
    """``obj`` as one line of JSON (values JSON does not know, such as timestamps, written as text)."""
    return json.dumps(obj, indent=None, default=str)
