"""Label next, in the Detections view: the unlabelled tiles the label set's detections rank highest and those they
are least sure of (:func:`rsclip.search.suggest.suggest_labels`), each with "+" / "-" in place.

A tile labelled here leaves the panel on the next run of the page (suggestions are unlabelled tiles only) and
counts for the next detection run; the Labels view lists it and undoes it. The panel holds at most
:data:`~rsclip.app.web.layout.GRID_COLUMNS` tiles of each kind: one row, what an analyst labels between runs.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from rsclip.app.web import caches
from rsclip.app.web.context import PageContext
from rsclip.app.web.keys import KEY_LABEL_NEXT, VIEW_DETECT, view_key
from rsclip.app.web.layout import GRID_COLUMNS
from rsclip.app.web.text import describe_window, escape_markdown, readable_error, source_name
from rsclip.app.web.views.labelling import label_buttons
from rsclip.app.web.views.tile_image import show_image
from rsclip.errors import NotFound
from rsclip.search.suggest import TOP, UNCERTAIN, WHY, suggest_labels
from rsclip.table import detections, tiles

KINDS = {TOP: ("Ranked highest, not labelled yet", "confirm or correct the detector's best guesses"),
         UNCERTAIN: ("Least certain", "scores nearest 0.5: where one label moves the detector most")}


def label_next(ctx: PageContext) -> None:
    """The panel (container ``KEY_LABEL_NEXT``; a kind's cards ``<KEY_LABEL_NEXT>-<kind>-<rank>``)."""
    try:
        found = suggest_labels(ctx.config.db, ctx.label, k=GRID_COLUMNS, table=ctx.config.table)
    except NotFound:
        return  # no detections yet: the review says so
    except Exception as exc:
        st.warning(f"Label next unavailable: {escape_markdown(readable_error(exc))}")
        return
    with st.container(border=True, key=KEY_LABEL_NEXT):
        st.markdown("**Label next**")
        if found.empty:
            st.caption("Every detected tile is labelled.")
            return
        for kind, (title, why) in KINDS.items():
            chosen = found[found[WHY] == kind]
            if not chosen.empty:
                st.caption(f"{title}: {why}")
                suggestion_row(ctx, chosen, kind)


def suggestion_row(ctx: PageContext, chosen: pd.DataFrame, kind: str) -> None:
    """One row of suggestion cards of one kind."""
    for rank, (column, row) in enumerate(zip(st.columns(GRID_COLUMNS), chosen.to_dict("records")), start=1):
        with column, st.container(border=True, key=f"{KEY_LABEL_NEXT}-{kind}-{rank}"):
            show_image(caches.preview, row)
            st.markdown(f"score **{row[detections.SCORE]:.3f}**")
            st.caption(f"{escape_markdown(source_name(row[tiles.URI]))} · {describe_window(row)}",
                       help=escape_markdown(row[tiles.URI]))
            with st.container(horizontal=True):
                label_buttons(ctx, str(row[tiles.ID]), view_key("next", VIEW_DETECT, kind, rank, row[tiles.ID]))
