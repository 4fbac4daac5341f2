"""Ranked tiles on the page: a map of their footprints with the opened tile's panel (and its timeline:
:mod:`rsclip.app.web.views.timeline`), downloads, and a grid of cards (preview, score, window, bounds, date,
"Similar tiles", "+" / "-", "Timeline").

Every value from the table (uris, names) is drawn as plain text (``escape_markdown``); on the map it is
text too (``map.js`` sets ``textContent``). Tables without bounds get the grid alone, as before the map.
"""

from __future__ import annotations

import pandas as pd
import shapely
import streamlit as st

from rsclip.app.web import caches
from rsclip.app.web.context import PageContext
from rsclip.app.web.data import mapdata
from rsclip.app.web.data.download_files import file_stem, rows_file
from rsclip.app.web.data.timedata import seen_text
from rsclip.app.web.keys import (KEY_TILE_PANEL, RESULT_KEYS, SCORE_NAMES, SOURCE_TILE, STATE_IMAGE_SOURCE,
                                 STATE_QUERY_TILE, STATE_VIEW, VIEW_IMAGE, view_key)
from rsclip.app.web.layout import GRID_COLUMNS
from rsclip.app.web.text import describe_bounds, describe_window, escape_markdown, readable_error, source_name
from rsclip.app.web.views.downloads import download_buttons
from rsclip.app.web.views.labelling import label_buttons
from rsclip.app.web.views.maps import selected_tile, show_map
from rsclip.app.web.views.tile_image import show_image
from rsclip.app.web.views.timeline import open_timeline, opened_row, timeline_section
from rsclip.table import tiles
from rsclip.search.searchers import SCORE


def choose_tile(row: dict) -> None:
    """Button callback: search for tiles similar to ``row`` in the image view."""
    st.session_state[STATE_QUERY_TILE] = row
    st.session_state[STATE_IMAGE_SOURCE] = SOURCE_TILE
    st.session_state[STATE_VIEW] = VIEW_IMAGE


def tile_of(row) -> dict:
    """The id, uri and window of a result row, as plain values (what "Similar tiles" remembers)."""
    return {tiles.ID: str(row[tiles.ID]), tiles.URI: str(row[tiles.URI]),
            **{c: int(row[c]) for c in tiles.WINDOW_COLUMNS}}


def located(row) -> bool:
    """True when a row has all four bound columns (a place on the map, and a timeline)."""
    return all(row.get(c) is not None and pd.notna(row.get(c)) for c in tiles.BOUNDS_COLUMNS)


def details(row, name: str) -> str:
    """A tile as caption markdown: ``name`` (already escaped), window, bounds and, when known, when it was
    seen."""
    seen = seen_text(row)
    return (f"{name} · {describe_window(row)}  \n{describe_bounds(row)}"
            + (f"  \n{escape_markdown(seen)}" if seen else ""))


def ranked(view: str, row, rank: int) -> str:
    """``#rank · score`` (or the view's name for its score) as markdown."""
    return f"**#{rank}** · {SCORE_NAMES.get(view, 'score')} **{row[SCORE]:.3f}**"


def show_results(ctx: PageContext, hits: pd.DataFrame, view: str, *, cards: int | None = None,
                 what: str = "tiles", empty: str = "No tiles match (is the search area outside the archive?).") -> None:
    """Draw ranked ``hits`` (best first, with a score column) for ``view``: the map (when the table and the
    hits are georeferenced), downloads of all hits, and cards for the first ``cards`` (all by default)."""
    key = RESULT_KEYS[view]
    if hits.empty:
        with st.container(key=key):
            st.info(empty)
        return
    if ctx.extent is not None and mapdata.georeferenced(hits).any():
        try:
            map_section(ctx, hits, view)
        except Exception as exc:  # the footprints could not be read: the cards still show the hits
            st.warning(f"map unavailable: {escape_markdown(readable_error(exc))}")
    config = ctx.config
    download_buttons(view, what, file_stem(config.table, what), len(hits),
                     lambda fmt: rows_file(config.db, config.table, hits, fmt))
    shown = hits.head(cards) if cards else hits
    with st.container(key=key):
        more = f" (the best {len(shown)} of {len(hits)})" if len(shown) < len(hits) else ""
        st.caption(f"{len(hits)} tile(s), best first{more}")
        card_grid(ctx, shown, view, key)


def map_features(ctx: PageContext, hits: pd.DataFrame) -> dict:
    """The feature collection of ``hits`` for the map: footprints (cached per result list) and, for the best
    :data:`~rsclip.app.web.data.mapdata.MAX_MAP_THUMBNAILS`, thumbnails (cached per tile)."""
    head = hits.head(mapdata.MAX_MAP_FEATURES).reset_index(drop=True)
    records = head.to_dict("records")
    bounds = tuple(caches.tile_bounds(r) for r in records)
    wkb = caches.footprint_wkb(ctx.config.db, ctx.config.table, tuple(str(r[tiles.ID]) for r in records), bounds)
    shapes = [shapely.from_wkb(w) if w else None for w in wkb]
    thumbnails = {}
    for row, box in zip(records[: mapdata.MAX_MAP_THUMBNAILS], bounds):
        window = tuple(int(row[c]) for c in tiles.WINDOW_COLUMNS)
        found = caches.map_thumbnail(str(row[tiles.URI]), window, box)
        if found is not None:
            thumbnails[str(row[tiles.ID])] = found
    return mapdata.tile_features(head, shapes, thumbnails)


def map_section(ctx: PageContext, hits: pd.DataFrame, view: str) -> None:
    """The map of ``hits`` and, under it, the panel of the tile opened on it."""
    features = map_features(ctx, hits)
    selected = selected_tile(view)
    show_map(view, features, extent=ctx.extent, basemap=ctx.config.basemap, selected=selected,
             legend=mapdata.legend(hits[SCORE].head(mapdata.MAX_MAP_FEATURES).to_numpy()))
    st.caption(f"{len(features['features'])} footprint(s) on the map, coloured by score: hover for score, source and "
               "window, click to open a tile, zoom in for thumbnails; draw a rectangle or polygon to search there.")
    ids = hits[tiles.ID].astype(str).tolist()
    if selected in ids:
        rank = ids.index(selected) + 1
        tile_panel(ctx, hits.iloc[rank - 1].to_dict(), rank, view)


def tile_panel(ctx: PageContext, row: dict, rank: int, view: str) -> None:
    """The opened tile: a large preview, its score, source, window, bounds and date, "Similar tiles",
    "+" / "-", and its timeline, from which another date of its place can be shown here instead."""
    shown = opened_row(view, row)
    tile = tile_of(shown)
    with st.container(border=True, key=view_key(KEY_TILE_PANEL, view)):
        left, right = st.columns([1, 2])
        with left:
            show_image(caches.panel_preview, shown)
        with right:
            st.markdown(ranked(view, row, rank))
            if shown is not row:
                st.caption("Showing another date of this place (opened from its timeline below):")
            st.caption(details(shown, escape_markdown(shown[tiles.URI])))
            with st.container(horizontal=True):
                st.button("Similar tiles", key=view_key("panel-similar", view, tile[tiles.ID]), on_click=choose_tile,
                          args=(tile,))
                label_buttons(ctx, tile[tiles.ID], view_key("panel-label", view, tile[tiles.ID]))
        timeline_section(ctx, row, view, tile[tiles.ID])


def card_grid(ctx: PageContext, hits: pd.DataFrame, view: str, key: str) -> None:
    """One card per hit, :data:`GRID_COLUMNS` a row (container keys ``<key>-hit-<rank>``)."""
    records = hits.to_dict("records")
    for start in range(0, len(records), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for offset, (column, row) in enumerate(zip(columns, records[start : start + GRID_COLUMNS])):
            rank = start + offset + 1
            with column, st.container(border=True, key=f"{key}-hit-{rank}"):
                card(ctx, row, rank, view)


def card(ctx: PageContext, row: dict, rank: int, view: str) -> None:
    """One result card (see :func:`card_grid`)."""
    show_image(caches.preview, row)
    st.markdown(ranked(view, row, rank))
    st.caption(details(row, escape_markdown(source_name(row[tiles.URI]))), help=escape_markdown(row[tiles.URI]))
    tile = tile_of(row)
    with st.container(horizontal=True):
        st.button("Similar tiles", key=view_key("similar", view, rank, tile[tiles.ID]), on_click=choose_tile,
                  args=(tile,))
        label_buttons(ctx, tile[tiles.ID], view_key("label", view, rank, tile[tiles.ID]))
        if ctx.times.has_dates and ctx.extent is not None and located(row):
            st.button("Timeline", key=view_key("timeline-card", view, rank, tile[tiles.ID]), on_click=open_timeline,
                      args=(view, tile[tiles.ID]), help="open this tile under the map, with the other dates of its place")
