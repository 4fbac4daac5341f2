"""Label next: the unlabelled tiles a label set's current detections rank highest, and those they are least sure of.

Both come from the label set's stored detections of its last complete run (``rsclip detect``; one model
version: :func:`rsclip.table.detections.shown_version`): the ``top`` tiles (the highest logits: confirm or
correct the probe's best guesses) and the ``uncertain`` ones (logits nearest 0, probabilities nearest 0.5:
where one label moves the decision boundary most). Labelled tiles are left out; a
tile that is both is listed once, as ``top``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rsclip.table import datasets, detections, labels, rows, tiles
from rsclip.errors import InvalidInput, NotFound
from rsclip.search.review import logits_of

MAX_SUGGESTIONS = 1000
WHY = "why"
TOP, UNCERTAIN = "top", "uncertain"


def suggest_labels(db, label: str, *, k: int = 10, table: str = tiles.DEFAULT_TABLE) -> pd.DataFrame:
    """Up to ``k`` ``top`` and ``k`` ``uncertain`` unlabelled tiles of ``label`` (module doc).

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        label: The label set, detected before (``rsclip detect DB LABEL``).
        k: How many of each kind, in [1, :data:`MAX_SUGGESTIONS`].
        table: The tile table the detections are of.

    Returns:
        A DataFrame with columns why, id, uri, score, logit, lon, lat (the middle of the tile's WGS84 bounds), the
        bound columns and the window columns (what a preview is cut by): the top tiles best first, then the
        uncertain ones nearest 0.5 first.

    Raises:
        InvalidInput: For a bad label name or ``k``.
        NotFound: When the table has no detections of ``label``.
    """
    label = labels.validate_label(label)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_SUGGESTIONS:
        raise InvalidInput(f"k must be an integer in [1, {MAX_SUGGESTIONS}], got {k!r}")
    tile_table = tiles.open_table(db, table)
    shown = detections.label_rows(db, label, table)
    if shown is None:
        raise NotFound(f"no detections of {label!r} for table {table!r}: run rsclip detect DB {label} first")
    found, where = shown
    columns = [tiles.ID, detections.SCORE, *tiles.BOUNDS_COLUMNS]
    columns += [detections.LOGIT] if detections.LOGIT in found.schema.names else []
    frame = datasets.dataset_of(found).to_table(columns=columns, filter=where).to_pandas()
    labelled = set(labels.read_labels(db, label, table=table)[tiles.ID].astype(str))
    frame = frame[~frame[tiles.ID].isin(labelled)].copy()
    frame[detections.LOGIT] = logits_of(frame)
    top = frame.sort_values([detections.LOGIT, tiles.ID], ascending=[False, True], kind="stable").head(k)
    rest = frame[~frame[tiles.ID].isin(set(top[tiles.ID]))]
    uncertain = rest.assign(_distance=rest[detections.LOGIT].abs()).sort_values(
        ["_distance", tiles.ID], kind="stable").head(k).drop(columns=["_distance"])
    out = pd.concat([top.assign(**{WHY: TOP}), uncertain.assign(**{WHY: UNCERTAIN})], ignore_index=True)
    uris = rows.rows_by_id(tile_table, out[tiles.ID], [tiles.URI, *tiles.WINDOW_COLUMNS]).to_pandas()
    out = out.merge(uris, on=tiles.ID, how="left")
    out[detections.SCORE] = 1.0 / (1.0 + np.exp(-out[detections.LOGIT].to_numpy(dtype=np.float64)))
    out["lon"] = (out["lon_min"] + out["lon_max"]) / 2
    out["lat"] = (out["lat_min"] + out["lat_max"]) / 2
    order = [WHY, tiles.ID, tiles.URI, detections.SCORE, detections.LOGIT, "lon", "lat", *tiles.BOUNDS_COLUMNS]
    return out[order + [c for c in tiles.WINDOW_COLUMNS if c in out.columns]]


__all__ = ["MAX_SUGGESTIONS", "suggest_labels"]
