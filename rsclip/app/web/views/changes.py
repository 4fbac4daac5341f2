"""The Changes view: the places whose embedding moved most between two dates, on the map coloured by change.

Two typed dates (each ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``, strict as in :mod:`rsclip.app.web.data.timedata`: a
year or month means all of it) and the sidebar's area, cloud and nodata limits (not its date range: the two
dates are this view's own) go to :func:`rsclip.search.timeline.changes` (cached per table version): each
place of date A paired with the tile of date B it overlaps most, ranked by ``change = 1 - cosine
similarity``. The best ``k`` are drawn as any ranked tiles are (:func:`rsclip.app.web.views.results.show_results`:
map coloured by change, cards, and downloads through the one export writer, ``score`` = change).
"""

from __future__ import annotations

import streamlit as st

from rsclip.app.web import caches
from rsclip.app.web.context import PageContext
from rsclip.app.web.data.mapdata import area_text
from rsclip.app.web.data.timedata import DATE_HINT, MAX_DATE_CHARS, checked_day, describe_span
from rsclip.app.web.keys import KEY_CHANGES_A, KEY_CHANGES_B, KEY_CHANGES_RESULTS, VIEW_CHANGES
from rsclip.app.web.text import escape_markdown, readable_error
from rsclip.app.web.views.results import show_results
from rsclip.app.web.views.search import empty_map, failed

NO_DATES = "This table has no dates: there are no two dates to compare."


def date_inputs(ctx: PageContext) -> tuple[str, str]:
    """The two dates typed by the visitor (blank until typed)."""
    first, last = ctx.times.first.strftime("%Y"), ctx.times.last.strftime("%Y")
    left, right = st.columns(2)
    a = left.text_input("Date A (before)", key=KEY_CHANGES_A, max_chars=MAX_DATE_CHARS, placeholder=first,
                        help=f"{DATE_HINT}: a year or a month means all of it")
    b = right.text_input("Date B (after)", key=KEY_CHANGES_B, max_chars=MAX_DATE_CHARS, placeholder=last,
                         help=f"{DATE_HINT}: a year or a month means all of it")
    return a, b


def compare(ctx: PageContext, a: str, b: str):
    """:func:`rsclip.search.timeline.changes` of the days ``a`` and ``b`` under the sidebar's area and limits."""
    where = ctx.filters(dated=False)
    polygon = area_text(where["polygon"]) if where["polygon"] is not None else None
    return caches.changes(ctx.config.db, ctx.config.table, ctx.summary.get("version"), a, b, ctx.k, where["bbox"],
                          polygon, where["max_cloud"], where["max_nodata"])


def changes_view(ctx: PageContext) -> None:
    """Draw the Changes view (see the module)."""
    if not ctx.times.has_dates:
        with st.container(key=KEY_CHANGES_RESULTS):
            st.caption(NO_DATES)
        return
    st.caption(f"Places ranked by how much their embedding moved between two dates (the table has "
               f"{escape_markdown(describe_span(ctx.times))}); draw an area on a map to compare only there.")
    typed = date_inputs(ctx)
    try:
        a, b = checked_day(typed[0], "date A"), checked_day(typed[1], "date B")
    except ValueError as exc:
        st.error(f"Dates: {escape_markdown(readable_error(exc))}")
        return
    if a is None or b is None:
        st.caption("Type both dates to compare them.")
        empty_map(ctx, VIEW_CHANGES)
        return
    try:
        with st.spinner("Comparing..."):
            moved = compare(ctx, a, b)
    except Exception as exc:
        failed("Comparison failed", exc)
        return
    show_results(ctx, moved, VIEW_CHANGES, what="changes",
                 empty=f"No place has tiles of both {a} and {b} in the search area.")
