"""The map of the web app: tile footprints coloured by score, thumbnails when zoomed in, a drawn search area.

**Why Leaflet in a Streamlit custom component.** The map must work with no internet, so its JavaScript has to
be served by the app itself. Streamlit's own maps (``st.map``, ``st.pydeck_chart``) bundle deck.gl locally but
fetch their basemap from a CDN by default and cannot draw or edit a polygon, and pydeck outside Streamlit loads
deck.gl from a CDN. Folium-style components load Leaflet from a CDN. So the map is a Streamlit (v1) custom
component whose files lie in this package (``rsclip/app/web/static/map``: Leaflet 1.9.4 taken from the npm
registry with its BSD-2-Clause licence, and ``map.js``, ours), served by Streamlit from the app's own
origin. Leaflet was chosen over MapLibre GL because it draws vector layers as SVG (no WebGL, which headless
and remote-desktop browsers often lack; the drawn features are DOM elements the browser tests read back in
geographic coordinates) and is 150 KB. The draw tools (rectangle by dragging, polygon by clicking, clear)
are ~60 lines of ``map.js`` on Leaflet's own events rather than a plugin: the popular one (Leaflet.draw) is
unmaintained since 2018 and would add a sprite sheet and 60 KB for far more than is needed here. No basemap
is drawn unless ``rsclip serve --basemap URL_TEMPLATE`` names one: then, and only then, the visitor's browser
fetches XYZ tiles from that server.

The component sends three events (:class:`rsclip.app.web.data.mapdata.MapEvent`): a tile opened (clicked), an area
drawn, the area cleared. :func:`show_map` handles each once, in the widget's change callback, before the
page draws again: the area becomes the search area of every view (``STATE_AREA``), a click opens the tile's
panel under that map. An event that fails the checks of :func:`rsclip.app.web.data.mapdata.parse_event` changes
nothing and leaves a message.
"""

from __future__ import annotations

import functools
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from rsclip.app.web.data import mapdata
from rsclip.app.web.keys import STATE_AREA, STATE_MESSAGE, STATE_SELECTED, view_key
from rsclip.app.web.text import escape_markdown, readable_error

STATIC_DIR = Path(__file__).parents[1] / "static" / "map"
COMPONENT_NAME = "rsclip_map"
MAP_HEIGHT = 480
_HANDLED = "map_nonces"  # session state: the last nonce handled per map key


def _component():
    # declared on use: Streamlit registers a component only inside a script run
    return components.declare_component(COMPONENT_NAME, path=str(STATIC_DIR))


def apply_event(key: str, view: str) -> None:
    """The change callback of the map ``key`` of ``view``: apply its new event to the session (once)."""
    try:
        event = mapdata.parse_event(st.session_state.get(key))
    except ValueError as exc:
        st.session_state[STATE_MESSAGE] = ("error", f"Map: {escape_markdown(readable_error(exc))}")
        return
    handled = st.session_state.setdefault(_HANDLED, {})
    if event is None or handled.get(key) == event.nonce:
        return
    handled[key] = event.nonce
    if event.kind == mapdata.EVENT_SELECT:
        st.session_state[view_key(STATE_SELECTED, view)] = event.tile_id
    elif event.kind == mapdata.EVENT_AREA:
        st.session_state[STATE_AREA] = mapdata.area_geojson(event.area)
    else:
        st.session_state.pop(STATE_AREA, None)


def current_area():
    """The search area drawn on a map (a validated :class:`~rsclip.search.polygons.Region`), or None."""
    geometry = st.session_state.get(STATE_AREA)
    return mapdata.checked_area(geometry) if geometry is not None else None


def selected_tile(view: str) -> str | None:
    """The id of the tile opened on ``view``'s map, or None."""
    return st.session_state.get(view_key(STATE_SELECTED, view))


def show_map(view: str, features: dict, *, extent=None, basemap: str | None = None,
             selected: str | None = None, legend: dict | None = None) -> None:
    """Draw the map of ``view``: ``features`` (:func:`rsclip.app.web.data.mapdata.tile_features`), the current
    search area, ``extent`` (shown when there is no feature), an optional ``basemap`` template, the ``selected``
    tile highlighted and a score ``legend``."""
    key = view_key("map", view)
    area = st.session_state.get(STATE_AREA)
    _component()(
        features=features, version=mapdata.version_of(features), area=area,
        extent=list(extent) if extent else None, basemap=basemap, selected=selected, legend=legend,
        height=MAP_HEIGHT, key=key, default=None, on_change=functools.partial(apply_event, key, view),
    )
