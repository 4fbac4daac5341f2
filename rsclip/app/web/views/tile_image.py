"""A tile's picture on the page: its preview cut from the source by the tile window, or one line saying why not.

Shared by the result cards and the tile panel (:mod:`rsclip.app.web.views.results`), the labelled tiles
(:mod:`rsclip.app.web.views.search`) and the timeline (:mod:`rsclip.app.web.views.timeline`).
"""

from __future__ import annotations

import streamlit as st

from rsclip.app.web.text import escape_markdown, readable_error
from rsclip.table import tiles


def show_image(read, row, what: str = "preview") -> None:
    """The preview ``read(uri, x, y, w, h)`` of ``row``, or a one-line warning when it cannot be read."""
    try:
        window = [int(row[c]) for c in tiles.WINDOW_COLUMNS]
        st.image(read(str(row[tiles.URI]), *window), width="stretch", output_format="JPEG")
    except Exception as exc:  # a moved or unreadable source must not hide the other tiles
        st.warning(f"{what} unavailable: {escape_markdown(readable_error(exc))}")
