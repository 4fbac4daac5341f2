"""The sidebar's "When": a date range (start and end, either open) and, where the table records them, the
largest cloud cover and nodata share; their summary in words and as ``rsclip query`` flags.

What is chosen reaches every search through :meth:`rsclip.app.web.context.PageContext.filters`. The dates are
typed (``YYYY-MM-DD``, see :mod:`rsclip.app.web.data.timedata`: strict, bounded, checked before use); a date that is
not one, or a start after the end, is one line on every view and nothing is searched. Tables written before
rsclip recorded time (no time columns), and tables whose tiles have no known date, get a note instead of
the date fields; the cloud and nodata limits are shown only when some tile records the value (a limit on a
value no tile knows would leave every tile out).
"""

from __future__ import annotations

import streamlit as st

from rsclip.app.web.data.timedata import DATE_HINT, MAX_DATE_CHARS, TableTimes, TimeFilter, describe_span, time_filter
from rsclip.app.web.keys import KEY_DATE, KEY_DATE_END, KEY_DATE_START, KEY_DATE_SUMMARY, KEY_MAX_CLOUD, KEY_MAX_NODATA
from rsclip.app.web.text import escape_markdown, readable_error
from rsclip.table import tiles

NO_COLUMNS = ("This table records no dates (it was written before rsclip kept them). `rsclip upgrade` adds the "
              "columns; tiles embedded from a STAC catalog or with `--datetime-from-name` carry dates.")
NO_DATES = ("No tile of this table has a known date (embed from a STAC catalog, or with `--datetime-from-name`, "
            "to record them).")
ANY = 100  # a limit at 100 % is no limit: tiles whose value is unknown are kept


def date_fields(times: TableTimes) -> tuple[str, str]:
    """The start and end typed by the visitor (blank: open)."""
    st.caption(escape_markdown(describe_span(times)))
    left, right = st.columns(2)
    hint = f"{DATE_HINT}; blank: open"
    start = left.text_input("From", key=KEY_DATE_START, max_chars=MAX_DATE_CHARS, help=hint,
                            placeholder=times.first.strftime("%Y-%m-%d"))
    end = right.text_input("To", key=KEY_DATE_END, max_chars=MAX_DATE_CHARS, help=f"{hint}; the whole day counts",
                           placeholder=times.last.strftime("%Y-%m-%d"))
    return start, end


def limit_sliders(times: TableTimes) -> tuple[int | None, int | None]:
    """The cloud cover and nodata limits in percent (None where the table records no value)."""
    unknown = "At 100 % there is no limit; below, tiles whose {} is unknown are left out."
    cloud = nodata = None
    if times.clouded:
        cloud = st.slider("Max cloud cover (%)", 0, ANY, ANY, key=KEY_MAX_CLOUD,
                          help=f"the cloud cover of the tile's catalog item. {unknown.format('cloud cover')}")
    if times.measured:
        nodata = st.slider("Max nodata share (%)", 0, ANY, ANY, key=KEY_MAX_NODATA,
                           help=f"the share of the tile's pixels without data. {unknown.format('nodata share')}")
    return cloud, nodata


def show_summary(chosen: TimeFilter) -> None:
    """The limits in words and as flags for ``rsclip query`` / ``rsclip export`` (copy them)."""
    words = chosen.describe()
    if words is None:
        return
    with st.container(key=KEY_DATE_SUMMARY):
        note = " (undated tiles left out)" if chosen.date is not None else ""
        st.caption(f"Searching tiles {escape_markdown(words)}{note}; for the CLI:")
        st.code(chosen.cli(), language="bash", wrap_lines=True)


def date_filter(times: TableTimes) -> tuple[TimeFilter, str | None]:
    """Draw "When" for a table recording ``times``; returns the chosen :class:`TimeFilter` and the one-line
    error of a bad choice (then no limit is returned, and the page searches nothing)."""
    with st.container(key=KEY_DATE):
        start = end = None
        if tiles.DATETIME not in times.columns:
            st.caption(NO_COLUMNS)
        elif not times.has_dates:
            st.caption(NO_DATES)
        else:
            start, end = date_fields(times)
        cloud, nodata = limit_sliders(times)
        try:
            chosen = time_filter(start, end, cloud, nodata)
        except ValueError as exc:
            return TimeFilter(), f"Dates: {escape_markdown(readable_error(exc))}"
        show_summary(chosen)
    return chosen, None
