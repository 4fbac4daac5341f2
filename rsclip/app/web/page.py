"""The Streamlit page of the web app (``rsclip serve``): six views over one tile table.

Streamlit runs this file as a script (``streamlit run page.py -- --db DB --table NAME [--basemap URL]``,
started by :func:`rsclip.app.server.serve`) and reruns it on every interaction; the ``__main__`` block is the
only place the app reads argv. The views live in their modules: text and image search and the label set's
"Find more like these" (:mod:`rsclip.app.web.views.search`), detections (:mod:`rsclip.app.web.views.detections`),
changes between two dates (:mod:`rsclip.app.web.views.changes`), the feature finder
(:mod:`rsclip.app.web.views.feature_finder`); ranked tiles are drawn by :mod:`rsclip.app.web.views.results` (map,
tile panel with its timeline, downloads, cards), the sidebar (where and when to search, labels) by
:mod:`rsclip.app.web.views.sidebar`. Every value that comes from outside (object names, table values, upload
names, typed text, error messages naming them) goes through ``escape_markdown`` before it is drawn, and every
cache is bounded (:mod:`rsclip.app.web.caches`).
"""

from __future__ import annotations

import argparse
import sys

import streamlit as st

from rsclip.app.server import WebConfig
from rsclip.app.web import caches
from rsclip.app.web.keys import (KEPT_KEYS, KEY_TEXT, STATE_MESSAGE, STATE_VIEW, VIEW_CHANGES, VIEW_DETECT,
                                 VIEW_FEATURE, VIEW_IMAGE, VIEW_LABELS, VIEW_TEXT, VIEWS)
from rsclip.app.web.text import escape_markdown, readable_error
from rsclip.app.web.views.changes import changes_view
from rsclip.app.web.views.detections import detect_view
from rsclip.app.web.views.feature_finder import feature_view
from rsclip.app.web.views.search import empty_map, image_view, labels_view, text_view
from rsclip.app.web.views.sidebar import sidebar
from rsclip.search.searchers import serve_searches
from rsclip.table import tiles


def show_view(view: str, ctx) -> None:
    """Draw one view."""
    if view == VIEW_TEXT:
        text_view(ctx)
        if not st.session_state.get(KEY_TEXT, "").strip():
            empty_map(ctx, VIEW_TEXT)
    elif view == VIEW_IMAGE:
        image_view(ctx)
    elif view == VIEW_LABELS:
        labels_view(ctx)
    elif view == VIEW_DETECT:
        detect_view(ctx)
    elif view == VIEW_CHANGES:
        changes_view(ctx)
    else:
        feature_view(ctx.summary)


def render_app(config: WebConfig) -> None:
    """Draw the page for ``config`` (called by Streamlit on every interaction)."""
    st.set_page_config(page_title="rsclip search", layout="wide")
    st.title("rsclip: search a satellite archive")
    serve_searches(config.resident_max_gb)  # rsclip serve --resident-max-gb
    try:
        conn = caches.connection(config.db)
        summary = caches.table_summary(config.db, config.table)
    except Exception as exc:
        # the visitor learns what failed, not where the server keeps its files
        reason = readable_error(exc).replace(str(config.db), "the database")
        st.error(f"Cannot open table {escape_markdown(repr(config.table))}: {escape_markdown(reason)}")
        st.stop()
    for key in KEPT_KEYS:  # a widget of a closed tab keeps its value (see keys.KEPT_KEYS)
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    ctx, problems = sidebar(config, summary, conn)
    message = st.session_state.pop(STATE_MESSAGE, None)
    with st.container():  # always there, so a message does not move (and remount) the map below it
        if message:
            st.error(message[1])  # already escaped where it was made
    st.session_state.setdefault(STATE_VIEW, VIEW_TEXT)
    tabs = st.tabs(list(VIEWS), key=STATE_VIEW, on_change="rerun")
    for tab, view in zip(tabs, VIEWS):
        if not tab.open:
            continue
        with tab:
            if problems and view != VIEW_FEATURE:  # a bad box or date: one line each, nothing searched
                for problem in problems:
                    st.error(problem)
                continue
            show_view(view, ctx)


def parse_args(argv: list[str]) -> WebConfig:
    """The app's configuration from the arguments after ``--`` on the streamlit command line."""
    parser = argparse.ArgumentParser(prog="rsclip serve (page)")
    parser.add_argument("--db", required=True, help="LanceDB database: local folder or s3:// URI")
    parser.add_argument("--table", default=tiles.DEFAULT_TABLE, help="tile table to search")
    parser.add_argument("--basemap", default=None, help="XYZ tile URL template drawn under the map")
    parser.add_argument("--ray-address", default=None, help="Ray cluster for detection runs")
    parser.add_argument("--resident-max-gb", type=float, default=None, help="largest resident copy (GB)")
    args = parser.parse_args(argv)
    return WebConfig(db=args.db, table=args.table, basemap=args.basemap, ray_address=args.ray_address,
                     resident_max_gb=args.resident_max_gb)


if __name__ == "__main__":
    render_app(parse_args(sys.argv[1:]))
