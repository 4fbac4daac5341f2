"""The Feature finder view: one uploaded image, one typed feature, patch probabilities and a heatmap.

The scoring lives in :mod:`rsclip.app.web.data.finder` (the upload checked and decoded under the app's limits, the
text always text); this module draws its cached result (:func:`rsclip.app.web.caches.feature_match`).
"""

from __future__ import annotations

import streamlit as st

from rsclip.app.web import caches
from rsclip.app.web.data.finder import MAX_PATCH_THUMBNAILS, FeatureMatch
from rsclip.app.web.keys import (KEY_FEATURE_COLS, KEY_FEATURE_GRID, KEY_FEATURE_MODE, KEY_FEATURE_OVERLAY,
                                 KEY_FEATURE_RESULTS, KEY_FEATURE_ROWS, KEY_FEATURE_TEXT, KEY_FEATURE_TILE,
                                 KEY_FEATURE_UPLOAD, PATCHES_GRID, PATCHES_TILE)
from rsclip.app.web.layout import DEFAULT_GRID, GRID_COLUMNS, MAX_GRID
from rsclip.app.web.text import describe_bounds, escape_markdown
from rsclip.app.web.views.search import failed
from rsclip.app.web.views.uploader import image_uploader
from rsclip.search.encoding import MAX_TEXT_CHARS


def patch_choice() -> tuple[tuple[int, int] | None, int | None]:
    """``(grid, tile)``: how the visitor chose to cut the image (a rows x columns grid, or square patches)."""
    mode = st.radio("Patches", (PATCHES_GRID, PATCHES_TILE), key=KEY_FEATURE_MODE, horizontal=True)
    if mode == PATCHES_GRID:
        rows = st.number_input("Rows", 1, MAX_GRID, DEFAULT_GRID[0], key=KEY_FEATURE_ROWS)
        cols = st.number_input("Columns", 1, MAX_GRID, DEFAULT_GRID[1], key=KEY_FEATURE_COLS)
        return (int(rows), int(cols)), None
    return None, int(st.number_input("Patch size (px)", 16, 4096, 224, step=16, key=KEY_FEATURE_TILE))


def feature_view(summary: dict) -> None:
    """Draw the Feature finder for the table's model (``summary["model"]``)."""
    left, right = st.columns([2, 1])
    with left:
        upload = image_uploader("Upload an image or GeoTIFF", KEY_FEATURE_UPLOAD)
        text = st.text_input("Feature to find", key=KEY_FEATURE_TEXT, placeholder="storage tanks",
                             max_chars=MAX_TEXT_CHARS)
    with right:
        grid, tile = patch_choice()
    if upload is None or not text.strip():
        st.caption("Upload an image and type a feature: each patch is scored against it, probabilities are a "
                   "softmax over the patches.")
        return
    try:
        with st.spinner("Scoring patches..."):
            match = caches.feature_match(upload.getvalue(), upload.name, text, summary["model"], grid, tile)
    except Exception as exc:
        failed("Feature finder failed", exc)
        return
    show_match(match, upload.name, text)


def show_match(match: FeatureMatch, name: str, text: str) -> None:
    """The best patch, the heatmap, the probability grid and the patch thumbnails of ``match``."""
    patches = match.patches
    best = patches.iloc[0]
    with st.container(key=KEY_FEATURE_RESULTS):
        st.markdown(
            f"**{len(patches)} patches** of {escape_markdown(name)} scored against "
            f"*{escape_markdown(text)}*; best: row {int(best['row'])}, "
            f"column {int(best['col'])}, probability **{best['probability']:.3f}** "
            f"(cosine {best['score']:.3f}, {describe_bounds(best)})"
        )
        overlay, table = st.columns([3, 2])
        with overlay, st.container(key=KEY_FEATURE_OVERLAY):
            st.image(match.overlay_png, caption="probability heatmap (brighter = more likely)", width="stretch")
        with table:
            st.markdown("**Probability per patch** (rows x columns)")
            st.dataframe(match.probability_grid().style.format("{:.3f}").background_gradient(cmap="inferno", axis=None))
        ordered = match.shown().to_dict("records")
        n_cols = int(patches["col"].max()) + 1
        if len(patches) > MAX_PATCH_THUMBNAILS:
            st.caption(f"{len(patches)} patches: showing the {MAX_PATCH_THUMBNAILS} most likely")
            n_cols = GRID_COLUMNS
        with st.container(key=KEY_FEATURE_GRID):
            for start in range(0, len(ordered), n_cols):
                for column, row in zip(st.columns(n_cols), ordered[start : start + n_cols]):
                    with column:
                        st.image(match.patch_pixels(row), width="stretch", output_format="JPEG")
                        st.caption(f"r{int(row['row'])} c{int(row['col'])} · p={row['probability']:.3f}")
