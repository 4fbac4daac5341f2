"""The search views of the web app: text search, image search, and the label set's "Find more like these".

Each view runs one search under the page's filters (:meth:`rsclip.app.web.context.PageContext.filters`: area,
dates, cloud and nodata limits)
on the server's resident copy of the table and hands the hits to :func:`rsclip.app.web.views.results.show_results`.
Typed text is text (``query_text``); an upload is taken under the session's caps
(:mod:`rsclip.app.web.views.uploader`) and decoded under :mod:`rsclip.app.web.data.uploads`' limits.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from rsclip.app.web import caches
from rsclip.app.web.context import PageContext
from rsclip.app.web.data.download_files import file_stem, labels_file
from rsclip.app.web.data.finder import thumbnail
from rsclip.app.web.data.uploads import decode_upload
from rsclip.app.web.keys import (KEY_FIND_MORE, KEY_IMAGE_UPLOAD, KEY_LABELLED, KEY_TEXT, SOURCE_TILE, SOURCE_UPLOAD,
                                 STATE_FIND_MORE, STATE_IMAGE_SOURCE, STATE_QUERY_TILE, VIEW_IMAGE, VIEW_LABELS,
                                 VIEW_TEXT)
from rsclip.app.web.layout import GRID_COLUMNS, PREVIEW_SIZE
from rsclip.app.web.text import describe_window, escape_markdown, readable_error, source_name
from rsclip.app.web.views.downloads import download_buttons
from rsclip.app.web.views.labelling import counts_text, label_buttons
from rsclip.app.web.views.maps import show_map
from rsclip.app.web.views.results import show_results
from rsclip.app.web.views.tile_image import show_image
from rsclip.app.web.views.uploader import image_uploader
from rsclip.table import labels, rows, tiles
from rsclip.search.encoding import MAX_TEXT_CHARS
from rsclip.search.query import query, query_text, similar_tiles

# Labelled tiles drawn in the Labels view (the most recently labelled first).
MAX_LABELLED_SHOWN = 48


def failed(what: str, exc: BaseException) -> None:
    """One error line for the visitor; the message (which may name objects or uploads) as plain text."""
    st.error(f"{what}: {escape_markdown(readable_error(exc))}")


def empty_map(ctx: PageContext, view: str) -> None:
    """A view's map before its search: the table's extent, to draw an area on."""
    if ctx.extent is not None:
        show_map(view, {"type": "FeatureCollection", "features": []}, extent=ctx.extent, basemap=ctx.config.basemap)


def search_and_show(ctx: PageContext, view: str, search) -> None:
    """Run ``search()`` (it returns ranked hits) and show them in ``view``, or one error line."""
    try:
        with st.spinner("Searching..."):
            hits = search()
    except Exception as exc:
        failed("Search failed", exc)
        return
    path, note = hits.attrs.get("search_path"), hits.attrs.get("search_note")
    if path:  # which search answered: the resident copy (in memory or compact) or Lance, and why when unusual
        st.caption(f"Searched: {path}" + (f" ({escape_markdown(note)})" if note else ""))
    show_results(ctx, hits, view)


def text_view(ctx: PageContext) -> None:
    """Text search: a description typed by the visitor (always text, never a path)."""
    text = st.text_input("Describe what to find", key=KEY_TEXT, placeholder="an airport with two runways",
                         max_chars=MAX_TEXT_CHARS)
    if not text.strip():
        st.caption("Type a description and press Enter.")
        return
    search_and_show(ctx, VIEW_TEXT, lambda: query_text(ctx.conn, text, ctx.k, table=ctx.config.table,
                                                       resident=True, **ctx.filters()))


def uploaded_new_image() -> None:
    """Uploader callback: the image view shows the upload's results again."""
    st.session_state[STATE_IMAGE_SOURCE] = SOURCE_UPLOAD


def query_caption(image, caption: str) -> None:
    """The query of the image view: its picture (or a warning) and what it is, as plain text."""
    left, right = st.columns([1, 3])
    with left:
        image()
    with right:
        st.markdown("**Tiles similar to**")
        st.caption(caption)


def image_view(ctx: PageContext) -> None:
    """Image search: an uploaded image, or the tile whose "Similar tiles" was pressed."""
    upload = image_uploader("Upload an image (or press 'Similar tiles' under any result)", KEY_IMAGE_UPLOAD,
                            on_change=uploaded_new_image)
    source = st.session_state.get(STATE_IMAGE_SOURCE, SOURCE_UPLOAD)
    tile = st.session_state.get(STATE_QUERY_TILE)
    options = dict(table=ctx.config.table, resident=True, **ctx.filters())
    if source == SOURCE_TILE and tile is not None:
        query_caption(lambda: show_image(caches.preview, tile),
                      f"{escape_markdown(tile[tiles.URI])}  \n{describe_window(tile)}")
        search_and_show(ctx, VIEW_IMAGE, lambda: similar_tiles(ctx.conn, tile[tiles.ID], ctx.k, **options))
    elif upload is not None:
        try:
            image = decode_upload(upload.getvalue(), upload.name)
        except Exception as exc:
            failed("Search failed", exc)
            return
        query_caption(lambda: st.image(thumbnail(image, 2 * PREVIEW_SIZE), width="stretch", output_format="JPEG"),
                      f"{escape_markdown(upload.name)} · {image.shape[1]}x{image.shape[0]} px")
        search_and_show(ctx, VIEW_IMAGE, lambda: query(ctx.conn, image, ctx.k, **options))
    else:
        st.caption("Upload an image, or press 'Similar tiles' under a text-search result.")


def find_more() -> None:
    """Button callback: show the example search of the current label set."""
    st.session_state[STATE_FIND_MORE] = True


def labels_view(ctx: PageContext) -> None:
    """The current label set: its counts, "Find more like these" (the example search of its positives and
    negatives, the labelled tiles left out), its tiles, and its download."""
    if ctx.label is None:
        st.caption("Choose a label set in the sidebar, or name a new one, then press + or \u2212 on any tile.")
        return
    st.markdown(counts_text(ctx))
    positives = [i for i, v in ctx.labelled.items() if v == labels.POSITIVE]
    negatives = [i for i, v in ctx.labelled.items() if v == labels.NEGATIVE]
    st.button("Find more like these", key=KEY_FIND_MORE, type="primary", disabled=not positives, on_click=find_more,
              help="tiles nearest 2 x mean(positives) - mean(negatives), the labelled tiles left out")
    if ctx.labelled:
        download_buttons(VIEW_LABELS, "labels", file_stem(ctx.config.table, ctx.label), len(ctx.labelled),
                         lambda fmt: labels_file(ctx.config.db, ctx.config.table, ctx.label, fmt))
    if st.session_state.get(STATE_FIND_MORE) and positives:
        search_and_show(ctx, VIEW_LABELS, lambda: query(ctx.conn, positive=positives, negative=negatives, k=ctx.k,
                                                        table=ctx.config.table, resident=True, **ctx.filters()))
    labelled_grid(ctx)


def labelled_tiles_frame(ctx: PageContext) -> pd.DataFrame:
    """The labelled tiles of the current set with their uri and window, most recently labelled first."""
    frame = labels.read_labels(ctx.config.db, ctx.label, table=ctx.config.table)
    frame = frame.sort_values(labels.TIME, ascending=False, kind="stable").head(MAX_LABELLED_SHOWN)
    found = rows.rows_by_id(tiles.open_table(ctx.config.db, ctx.config.table), frame[tiles.ID],
                            (tiles.URI, *tiles.WINDOW_COLUMNS)).to_pandas()
    return frame.merge(found, on=tiles.ID, how="inner")


def labelled_grid(ctx: PageContext) -> None:
    """The tiles of the current label set (at most :data:`MAX_LABELLED_SHOWN`), each with "+" / "-"."""
    if not ctx.labelled:
        return
    try:
        frame = labelled_tiles_frame(ctx)
    except Exception as exc:
        failed("Labelled tiles", exc)
        return
    st.markdown(f"**Tiles labelled in {escape_markdown(ctx.label)}** (the latest {len(frame)} of {len(ctx.labelled)})"
                if len(ctx.labelled) > len(frame) else f"**Tiles labelled in {escape_markdown(ctx.label)}**")
    records = frame.to_dict("records")
    with st.container(key=KEY_LABELLED):
        for start in range(0, len(records), GRID_COLUMNS):
            for column, row in zip(st.columns(GRID_COLUMNS), records[start : start + GRID_COLUMNS]):
                with column, st.container(border=True):
                    show_image(caches.preview, row)
                    kind = "positive" if int(row[labels.VALUE]) == labels.POSITIVE else "negative"
                    st.caption(f"{kind} · {escape_markdown(source_name(row[tiles.URI]))} · {describe_window(row)}")
                    with st.container(horizontal=True):
                        label_buttons(ctx, str(row[tiles.ID]), f"labelled-{row[tiles.ID]}")
