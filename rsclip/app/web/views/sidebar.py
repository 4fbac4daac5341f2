"""The sidebar of the web app: the table, the number of results, where to search (a typed bounding box and
the area drawn on a map, shown as GeoJSON to copy), when (a date range and quality limits:
:mod:`rsclip.app.web.views.date_filter`), and the label set."""

from __future__ import annotations

import streamlit as st

from rsclip.app.server import WebConfig
from rsclip.app.web.context import PageContext
from rsclip.app.web.data.mapdata import area_text
from rsclip.app.web.keys import KEY_AREA, KEY_AREA_CLEAR, KEY_AREA_GEOJSON, KEY_BBOX, KEY_K, STATE_AREA
from rsclip.app.web.layout import DEFAULT_K, MAX_K
from rsclip.app.web.text import MAX_BBOX_CHARS, escape_markdown, model_name, parse_bbox, readable_error
from rsclip.app.web.views.date_filter import date_filter
from rsclip.app.web.views.labelling import label_choice, labelled_tiles, show_counts
from rsclip.app.web.views.maps import current_area


def clear_area() -> None:
    """Button callback: forget the drawn search area."""
    st.session_state.pop(STATE_AREA, None)


def area_panel():
    """The drawn search area as a GeoJSON snippet (for ``rsclip query --polygon`` or ``polygon=``) with a
    "Clear area" button; returns the area (a validated Region) or None."""
    try:
        area = current_area()
    except ValueError as exc:  # cannot happen for areas the map handler accepted; never trust it anyway
        st.session_state.pop(STATE_AREA, None)
        st.error(f"Search area: {escape_markdown(readable_error(exc))}")
        return None
    with st.container(key=KEY_AREA):
        if area is None:
            st.caption("Draw a rectangle or polygon on a map to search only there.")
            return None
        st.caption("Searching inside the area drawn on the map (GeoJSON, WGS84; copy it for "
                   "`rsclip query --polygon` or `rsclip.query(..., polygon=...)`):")
        with st.container(key=KEY_AREA_GEOJSON):
            st.code(area_text(area), language="json", wrap_lines=True)
        st.button("Clear area", key=KEY_AREA_CLEAR, on_click=clear_area)
    return area


def bbox_input():
    """The typed bounding box: ``(bbox or None, one-line error message or None)``."""
    text = st.text_input(
        "Bounding box (optional)", key=KEY_BBOX, placeholder="lon_min, lat_min, lon_max, lat_max",
        max_chars=MAX_BBOX_CHARS,
        help="WGS84 degrees. Only tiles intersecting the box are searched; tiles without georeference are then "
             "left out.",
    )
    try:
        bbox = parse_bbox(text)
    except ValueError as exc:
        return None, f"Bounding box: {escape_markdown(readable_error(exc))}"
    if bbox is not None:
        st.caption(f"searching inside lon {bbox[0]}..{bbox[2]}, lat {bbox[1]}..{bbox[3]}")
    return bbox, None


def sidebar(config: WebConfig, summary: dict, conn) -> tuple[PageContext, list[str]]:
    """Draw the sidebar; returns the page's :class:`PageContext` and the one-line errors of the visitor's
    filters (a bad bounding box or date; the views then search nothing)."""
    with st.sidebar:
        st.header("rsclip")
        # Names only: where the table and the model lie on the server is the operator's, not the visitor's.
        st.caption(f"table **{escape_markdown(config.table)}**")
        model = model_name(summary["model"], summary.get("weights"))
        st.caption(f"{summary['rows']:,} tiles · model {escape_markdown(model)} ({summary['dim']}-d)")
        k = st.slider("Results", min_value=1, max_value=MAX_K, value=DEFAULT_K, key=KEY_K)
        st.subheader("Where")
        bbox, bbox_error = bbox_input()
        area = area_panel() if summary.get("extent") is not None else None
        st.subheader("When")
        when, date_error = date_filter(summary["times"])
        st.subheader("Labels")
        label = label_choice(config)
        ctx = PageContext(config=config, conn=conn, summary=summary, k=k, bbox=bbox, area=area, label=label,
                          labelled=labelled_tiles(config, label), when=when)
        show_counts(ctx)
    return ctx, [e for e in (bbox_error, date_error) if e]
