"""The timeline of a tile opened on a view's map: the tiles covering its place ordered by date, each with its
date, its similarity to the first date (or to one chosen) and a thumbnail; "Open" shows that tile in the
tile panel above (its large preview, "Similar tiles", "+" / "-"), so two dates of a place can be compared.

The tiles are :func:`rsclip.search.timeline.timeline`'s for the opened tile (its footprint's centre), cached
per table version (:func:`rsclip.app.web.caches.timeline`), under the sidebar's cloud and nodata limits but not
its date range: a timeline is there to show the other dates of a place. At most :data:`MAX_SHOWN` entries
are drawn (the first by date); the "Similarity to" chooser lists every tile. A result card's "Timeline"
button opens its tile on the map, so its panel and timeline show. Tables without dates say so here.
Everything from the table (uris, dates) is drawn as plain text.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from rsclip.app.web import caches
from rsclip.app.web.context import PageContext
from rsclip.app.web.data.timedata import describe_time
from rsclip.app.web.keys import KEY_TIMELINE, KEY_TIMELINE_REFERENCE, STATE_OPENED, STATE_SELECTED, view_key
from rsclip.app.web.text import escape_markdown, readable_error, source_name
from rsclip.app.web.views.tile_image import show_image
from rsclip.table import tiles
from rsclip.search.timeline import SIMILARITY

MAX_SHOWN = 24
COLUMNS = 6
NO_DATES = "Timeline: this table has no dates, so there are no other dates of this place to show."


def open_timeline(view: str, tile_id: str) -> None:
    """Button callback of a result card: open ``tile_id`` on ``view``'s map (its panel and timeline)."""
    st.session_state[view_key(STATE_SELECTED, view)] = tile_id
    st.session_state.pop(view_key(STATE_OPENED, view), None)


def open_date(view: str, anchor: str, row: dict) -> None:
    """Button callback of a timeline entry: show ``row`` (a tile of the place of ``anchor``) in the panel."""
    st.session_state[view_key(STATE_OPENED, view)] = {"anchor": anchor, "row": row}


def opened_row(view: str, row: dict) -> dict:
    """The tile the panel of ``view`` shows for the opened result ``row``: another date of its place opened
    from the timeline, or ``row`` itself."""
    opened = st.session_state.get(view_key(STATE_OPENED, view))
    if opened and opened["anchor"] == str(row[tiles.ID]):
        return opened["row"]
    return row


def timeline_rows(ctx: PageContext, tile_id: str, reference: str | None) -> pd.DataFrame:
    """The timeline of ``tile_id`` (similarities to ``reference``, None: the first date), cached."""
    return caches.timeline(ctx.config.db, ctx.config.table, ctx.summary.get("version"), tile_id, reference,
                           **ctx.when.quality())


def entry_label(row: dict) -> str:
    """A timeline tile as a line of text: its date and source (for the chooser, which shows text as is)."""
    return f"{describe_time(row[tiles.DATETIME])} \u00b7 {source_name(row[tiles.URI])}"


def reference_choice(view: str, anchor: str, line: pd.DataFrame) -> str | None:
    """The "Similarity to" chooser of the place of ``anchor``: a tile id, None for the first date."""
    records = line.to_dict("records")
    names = {str(r[tiles.ID]): entry_label(r) for r in records}
    ids = list(names)
    key = view_key(KEY_TIMELINE_REFERENCE, view, anchor)
    if st.session_state.get(key) not in names:  # first showing, or a tile gone from the timeline
        st.session_state[key] = ids[0]
    chosen = st.selectbox("Similarity to", ids, key=key, format_func=names.get,
                          help="the tile whose embedding the others are compared with (cosine similarity)")
    return None if chosen == ids[0] else chosen


def show_entry(view: str, anchor: str, row: dict, number: int, reference: str, shown: str) -> None:
    """One tile of the timeline (container ``timeline-<view>-entry-<number>``): thumbnail, date, similarity,
    "Open"."""
    tile_id = str(row[tiles.ID])
    with st.container(border=True, key=view_key(KEY_TIMELINE, view, "entry", number)):
        show_image(caches.preview, row)
        mark = " (reference)" if tile_id == reference else ""
        st.caption(f"**{escape_markdown(describe_time(row[tiles.DATETIME]))}** \u00b7 similarity "
                   f"{row[SIMILARITY]:.3f}{escape_markdown(mark)}  \n{escape_markdown(source_name(row[tiles.URI]))}",
                   help=escape_markdown(row[tiles.URI]))
        st.button("Shown" if tile_id == shown else "Open", key=view_key("timeline-open", view, anchor, tile_id),
                  disabled=tile_id == shown, on_click=open_date, args=(view, anchor, row),
                  help="show this tile in the panel above")


def show_entries(view: str, anchor: str, line: pd.DataFrame, reference: str, shown: str) -> None:
    """The first :data:`MAX_SHOWN` tiles of ``line``, :data:`COLUMNS` a row."""
    records = line.head(MAX_SHOWN).to_dict("records")
    for start in range(0, len(records), COLUMNS):
        for offset, (column, row) in enumerate(zip(st.columns(COLUMNS), records[start : start + COLUMNS])):
            with column:
                show_entry(view, anchor, row, start + offset + 1, reference, shown)


def timeline_section(ctx: PageContext, row: dict, view: str, shown: str) -> None:
    """The timeline of the result ``row`` opened on ``view``'s map (container ``timeline-<view>``); ``shown``:
    the id of the tile its panel shows."""
    with st.container(key=view_key(KEY_TIMELINE, view)):
        if not ctx.times.has_dates:
            st.caption(NO_DATES)
            return
        anchor = str(row[tiles.ID])
        try:
            line = timeline_rows(ctx, anchor, None)
        except Exception as exc:  # a tile without georeference, a store fault: the panel above still shows
            st.caption(f"Timeline unavailable: {escape_markdown(readable_error(exc))}")
            return
        if line.empty:
            st.caption("Timeline: no tile of this place passes the sidebar's cloud and nodata limits.")
            return
        more = f"; the first {MAX_SHOWN} shown" if len(line) > MAX_SHOWN else ""
        st.markdown(f"**Timeline** \u00b7 {len(line)} tile(s) cover this place, by date{more}")
        reference = reference_choice(view, anchor, line)
        if reference is not None:
            try:
                line = timeline_rows(ctx, anchor, reference)
            except Exception as exc:
                st.caption(f"Timeline unavailable: {escape_markdown(readable_error(exc))}")
                return
        show_entries(view, anchor, line, reference or str(line[tiles.ID].iloc[0]), shown)
