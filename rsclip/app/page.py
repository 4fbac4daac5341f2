"""The Streamlit page of the web demo (``rsclip serve``): three views over one tile table.

Streamlit runs this file as a script (``streamlit run page.py -- --db DB --table NAME``, started by
:func:`rsclip.app.server.serve`) and reruns it on every interaction; the ``__main__`` block is the only place
the demo reads argv. Searches, parsing and server start-up live in :mod:`rsclip.app.server` and
:mod:`rsclip.app.finder`; this module draws. Every value that comes from outside (object names, table
values, upload names, typed text, error messages naming them) goes through ``escape_markdown`` before it is
drawn, and every cache is bounded in entries and holds small values only.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
import streamlit as st

from rsclip.app.finder import MAX_PATCH_THUMBNAILS, FeatureMatch, find_feature, thumbnail
from rsclip.app.preview import decode_upload, read_preview
from rsclip.app.server import (
    DEFAULT_GRID,
    DEFAULT_K,
    GRID_COLUMNS,
    KEY_BBOX,
    KEY_FEATURE_COLS,
    KEY_FEATURE_GRID,
    KEY_FEATURE_MODE,
    KEY_FEATURE_OVERLAY,
    KEY_FEATURE_RESULTS,
    KEY_FEATURE_ROWS,
    KEY_FEATURE_TEXT,
    KEY_FEATURE_TILE,
    KEY_FEATURE_UPLOAD,
    KEY_IMAGE_RESULTS,
    KEY_IMAGE_UPLOAD,
    KEY_K,
    KEY_TEXT,
    KEY_TEXT_RESULTS,
    MAX_BBOX_CHARS,
    MAX_GRID,
    MAX_K,
    PATCHES_GRID,
    PATCHES_TILE,
    PREVIEW_SIZE,
    SOURCE_TILE,
    SOURCE_UPLOAD,
    STATE_IMAGE_SOURCE,
    STATE_QUERY_TILE,
    STATE_VIEW,
    UPLOAD_TYPES,
    VIEWS,
    VIEW_FEATURE,
    VIEW_IMAGE,
    VIEW_TEXT,
    WebConfig,
    describe_bounds,
    describe_window,
    escape_markdown,
    parse_bbox,
    readable_error,
    source_name,
)
from rsclip.core import tiles
from rsclip.core.windows import Window
from rsclip.search.filters import BBox
from rsclip.search.query import MAX_TEXT_CHARS, query, query_text, similar_tiles

# Caches are bounded in entries, and their values are small, so in bytes too: a preview is at most
# PREVIEW_SIZE^2 RGB (~200 KB: <= ~50 MB in all), a feature match a few MB (rsclip.app.finder).
PREVIEW_CACHE_ENTRIES = 256
FEATURE_CACHE_ENTRIES = 8
CACHE_TTL_S = 3600


@st.cache_resource(show_spinner=False, max_entries=2)
def _connection(db: str):
    return tiles.connect(db)


@st.cache_data(ttl=60, max_entries=2, show_spinner=False)
def _table_summary(db: str, table: str) -> dict:
    tbl = tiles.open_table(db, table)
    model, dim = tiles.table_model(tbl)
    return {"model": model, "dim": dim, "rows": tbl.count_rows()}


@st.cache_data(max_entries=FEATURE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def _find_feature(data: bytes, name: str, text: str, model: str, grid, tile) -> FeatureMatch:
    return find_feature(data, name, text, model=model, grid=grid, tile=tile)


@st.cache_data(max_entries=PREVIEW_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def _preview(uri: str, x: int, y: int, width: int, height: int) -> np.ndarray:
    return read_preview(uri, Window(x, y, width, height), PREVIEW_SIZE)


def _failed(what: str, exc: BaseException) -> None:
    """One error line for the visitor; the message (which may name objects or uploads) as plain text."""
    st.error(f"{what}: {escape_markdown(readable_error(exc))}")


def _choose_tile(row: dict) -> None:
    """Button callback: search for tiles similar to ``row`` in the image view."""
    st.session_state[STATE_QUERY_TILE] = row
    st.session_state[STATE_IMAGE_SOURCE] = SOURCE_TILE
    st.session_state[STATE_VIEW] = VIEW_IMAGE


def _uploaded_new_image() -> None:
    st.session_state[STATE_IMAGE_SOURCE] = SOURCE_UPLOAD


def _show_hits(hits: pd.DataFrame, view: str, container_key: str) -> None:
    with st.container(key=container_key):
        if hits.empty:
            st.info("No tiles match (is the bounding box outside the archive?).")
            return
        st.caption(f"{len(hits)} tile(s), most similar first")
        records = hits.to_dict("records")
        for start in range(0, len(records), GRID_COLUMNS):
            columns = st.columns(GRID_COLUMNS)
            for offset, (column, row) in enumerate(zip(columns, records[start : start + GRID_COLUMNS])):
                rank = start + offset + 1
                with column, st.container(border=True, key=f"{container_key}-hit-{rank}"):
                    try:
                        window = [int(row[c]) for c in tiles.WINDOW_COLUMNS]
                        st.image(_preview(str(row[tiles.URI]), *window), width="stretch", output_format="JPEG")
                    except Exception as exc:  # a moved or unreadable source must not hide the other hits
                        st.warning(f"preview unavailable: {escape_markdown(readable_error(exc))}")
                    st.markdown(f"**#{rank}** · score **{row['score']:.3f}**")
                    st.caption(
                        f"{escape_markdown(source_name(row[tiles.URI]))} · {describe_window(row)}  \n"
                        f"{describe_bounds(row)}",
                        help=escape_markdown(row[tiles.URI]),
                    )
                    tile = {
                        tiles.ID: str(row[tiles.ID]),
                        tiles.URI: str(row[tiles.URI]),
                        **{c: int(row[c]) for c in tiles.WINDOW_COLUMNS},
                    }
                    st.button(
                        "Similar tiles", key=f"similar-{view}-{rank}-{tile[tiles.ID]}",
                        on_click=_choose_tile, args=(tile,),
                    )


def _sidebar(config: WebConfig, summary: dict) -> tuple[int, BBox | None, str | None]:
    with st.sidebar:
        st.header("rsclip")
        st.caption(f"table **{escape_markdown(config.table)}** in {escape_markdown(config.db)}")
        st.caption(f"{summary['rows']:,} tiles · model {escape_markdown(summary['model'])} ({summary['dim']}-d)")
        k = st.slider("Results", min_value=1, max_value=MAX_K, value=DEFAULT_K, key=KEY_K)
        text = st.text_input(
            "Bounding box (optional)", key=KEY_BBOX, placeholder="lon_min, lat_min, lon_max, lat_max",
            max_chars=MAX_BBOX_CHARS,
            help="WGS84 degrees. Only tiles intersecting the box are searched; tiles without georeference "
            "are then left out.",
        )
        try:
            bbox = parse_bbox(text)
        except ValueError as exc:
            return k, None, escape_markdown(readable_error(exc))
        if bbox is not None:
            st.caption(f"searching inside lon {bbox[0]}..{bbox[2]}, lat {bbox[1]}..{bbox[3]}")
    return k, bbox, None


def _text_view(config: WebConfig, conn, k: int, bbox: BBox | None) -> None:
    text = st.text_input("Describe what to find", key=KEY_TEXT, placeholder="an airport with two runways",
                         max_chars=MAX_TEXT_CHARS)
    if not text.strip():
        st.caption("Type a description and press Enter.")
        return
    try:
        with st.spinner("Searching..."):
            hits = query_text(conn, text, k, table=config.table, bbox=bbox, resident=True)
    except Exception as exc:
        _failed("Search failed", exc)
        return
    _show_hits(hits, VIEW_TEXT, KEY_TEXT_RESULTS)


def _image_view(config: WebConfig, conn, k: int, bbox: BBox | None) -> None:
    upload = st.file_uploader(
        "Upload an image (or press 'Similar tiles' under any result)", type=list(UPLOAD_TYPES),
        key=KEY_IMAGE_UPLOAD, on_change=_uploaded_new_image,
    )
    source = st.session_state.get(STATE_IMAGE_SOURCE, SOURCE_UPLOAD)
    tile = st.session_state.get(STATE_QUERY_TILE)
    try:
        if source == SOURCE_TILE and tile is not None:
            left, right = st.columns([1, 3])
            with left:
                window = [tile[c] for c in tiles.WINDOW_COLUMNS]
                try:
                    st.image(_preview(tile[tiles.URI], *window), width="stretch", output_format="JPEG")
                except Exception as exc:
                    st.warning(f"preview unavailable: {escape_markdown(readable_error(exc))}")
            with right:
                st.markdown("**Tiles similar to**")
                st.caption(f"{escape_markdown(tile[tiles.URI])}  \n{describe_window(tile)}")
            with st.spinner("Searching..."):
                hits = similar_tiles(conn, tile[tiles.ID], k, table=config.table, bbox=bbox, resident=True)
        elif upload is not None:
            image = decode_upload(upload.getvalue(), upload.name)
            left, right = st.columns([1, 3])
            with left:
                st.image(thumbnail(image, 2 * PREVIEW_SIZE), width="stretch", output_format="JPEG")
            with right:
                st.markdown("**Tiles similar to**")
                st.caption(f"{escape_markdown(upload.name)} · {image.shape[1]}x{image.shape[0]} px")
            with st.spinner("Searching..."):
                hits = query(conn, image, k, table=config.table, bbox=bbox, resident=True)
        else:
            st.caption("Upload an image, or press 'Similar tiles' under a text-search result.")
            return
    except Exception as exc:
        _failed("Search failed", exc)
        return
    _show_hits(hits, VIEW_IMAGE, KEY_IMAGE_RESULTS)


def _feature_view(config: WebConfig, summary: dict) -> None:
    left, right = st.columns([2, 1])
    with left:
        upload = st.file_uploader("Upload an image or GeoTIFF", type=list(UPLOAD_TYPES), key=KEY_FEATURE_UPLOAD)
        text = st.text_input("Feature to find", key=KEY_FEATURE_TEXT, placeholder="storage tanks",
                             max_chars=MAX_TEXT_CHARS)
    with right:
        mode = st.radio("Patches", (PATCHES_GRID, PATCHES_TILE), key=KEY_FEATURE_MODE, horizontal=True)
        if mode == PATCHES_GRID:
            rows = st.number_input("Rows", 1, MAX_GRID, DEFAULT_GRID[0], key=KEY_FEATURE_ROWS)
            cols = st.number_input("Columns", 1, MAX_GRID, DEFAULT_GRID[1], key=KEY_FEATURE_COLS)
            grid, tile = (int(rows), int(cols)), None
        else:
            tile = int(st.number_input("Patch size (px)", 16, 4096, 224, step=16, key=KEY_FEATURE_TILE))
            grid = None
    if upload is None or not text.strip():
        st.caption("Upload an image and type a feature: each patch is scored against it, probabilities are a "
                   "softmax over the patches.")
        return
    try:
        with st.spinner("Scoring patches..."):
            match = _find_feature(upload.getvalue(), upload.name, text, summary["model"], grid, tile)
    except Exception as exc:
        _failed("Feature finder failed", exc)
        return
    patches = match.patches
    best = patches.iloc[0]
    with st.container(key=KEY_FEATURE_RESULTS):
        st.markdown(
            f"**{len(patches)} patches** of {escape_markdown(upload.name)} scored against "
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


def render_app(config: WebConfig) -> None:
    """Draw the demo page for ``config`` (called by Streamlit on every interaction)."""
    st.set_page_config(page_title="rsclip search", layout="wide")
    st.title("rsclip: search a satellite archive")
    try:
        conn = _connection(config.db)
        summary = _table_summary(config.db, config.table)
    except Exception as exc:
        _failed(f"Cannot open table {escape_markdown(repr(config.table))} in {escape_markdown(config.db)}", exc)
        st.stop()
    k, bbox, bbox_error = _sidebar(config, summary)
    st.session_state.setdefault(STATE_VIEW, VIEW_TEXT)
    tabs = st.tabs(list(VIEWS), key=STATE_VIEW, on_change="rerun")
    for tab, view in zip(tabs, VIEWS):
        if not tab.open:
            continue
        with tab:
            if bbox_error and view != VIEW_FEATURE:
                st.error(f"Bounding box: {bbox_error}")
                continue
            if view == VIEW_TEXT:
                _text_view(config, conn, k, bbox)
            elif view == VIEW_IMAGE:
                _image_view(config, conn, k, bbox)
            else:
                _feature_view(config, summary)


def parse_args(argv: list[str]) -> WebConfig:
    """The demo's configuration from the arguments after ``--`` on the streamlit command line."""
    parser = argparse.ArgumentParser(prog="rsclip serve (page)")
    parser.add_argument("--db", required=True, help="LanceDB database: local folder or s3:// URI")
    parser.add_argument("--table", default=tiles.DEFAULT_TABLE, help="tile table to search")
    args = parser.parse_args(argv)
    return WebConfig(db=args.db, table=args.table)


if __name__ == "__main__":
    render_app(parse_args(sys.argv[1:]))
