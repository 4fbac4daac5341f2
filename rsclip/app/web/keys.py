"""The names the web app's page is built from: its views, session-state keys and widget keys.

Widget keys are also CSS classes (``st-key-<key>``) that the browser tests select on, so each is written
once, here. Keys built per view or per tile (``<prefix>-<view>-...``) are made by :func:`view_key`.
"""

from __future__ import annotations

import re

VIEW_TEXT, VIEW_IMAGE, VIEW_LABELS, VIEW_DETECT, VIEW_CHANGES, VIEW_FEATURE = (
    "Text search", "Image search", "Labels", "Detections", "Changes", "Feature finder")
VIEWS = (VIEW_TEXT, VIEW_IMAGE, VIEW_LABELS, VIEW_DETECT, VIEW_CHANGES, VIEW_FEATURE)
# Feature finder: how the uploaded image is cut.
PATCHES_GRID, PATCHES_TILE = "Grid", "Square patches"

# Session state.
STATE_VIEW = "view"
STATE_IMAGE_SOURCE = "image_source"  # SOURCE_UPLOAD or SOURCE_TILE: which query the image view shows
STATE_QUERY_TILE = "query_tile"  # dict of the clicked hit (id, uri, window)
SOURCE_UPLOAD, SOURCE_TILE = "upload", "tile"
STATE_AREA = "area"  # the search area drawn on a map: a validated GeoJSON geometry (dict), or absent
STATE_SELECTED = "selected"  # prefix: the tile opened on a view's map (view_key(STATE_SELECTED, view))
STATE_LABEL = "label_set"  # the label set that "+" / "-" write to
STATE_FIND_MORE = "find_more"  # True once "Find more like these" was pressed
STATE_MESSAGE = "message"  # a one-line message a button callback left for the page (kind, text)
STATE_OPENED = "opened"  # prefix: the tile of another date opened from a view's timeline ({"anchor", "row"})
STATE_UPLOADS = "uploads"  # the session's UploadLedger (rsclip.app.web.data.uploads): its uploads, under its caps

# Widgets and containers.
KEY_TEXT = "text_query"
KEY_BBOX = "bbox"
KEY_K = "k"
KEY_IMAGE_UPLOAD = "image_upload"
KEY_FEATURE_UPLOAD = "feature_upload"
KEY_FEATURE_TEXT = "feature_text"
KEY_FEATURE_TILE = "feature_tile"
KEY_FEATURE_MODE = "feature_mode"
KEY_FEATURE_ROWS = "feature_rows"
KEY_FEATURE_COLS = "feature_cols"
KEY_FEATURE_OVERLAY = "feature_overlay"
KEY_FEATURE_GRID = "feature_grid"
KEY_TEXT_RESULTS = "text_results"
KEY_IMAGE_RESULTS = "image_results"
KEY_FEATURE_RESULTS = "feature_results"
KEY_LABEL_RESULTS = "label_results"  # "Find more like these"
KEY_DETECT_RESULTS = "detect_results"
KEY_LABELLED = "labelled"  # the tiles of the current label set
KEY_AREA = "area_panel"  # the drawn area's GeoJSON snippet and its "Clear" button
KEY_AREA_CLEAR = "area_clear"
KEY_AREA_GEOJSON = "area_geojson"  # the snippet itself
KEY_LABEL_CHOICE = "label_choice"
KEY_LABEL_NEW = "label_new"
KEY_LABEL_COUNTS = "label_counts"
KEY_FIND_MORE = "find_more_button"
KEY_DETECT_RUN = "detect_run"
KEY_DETECT_BACKGROUND = "detect_background"
KEY_DETECT_PROGRESS = "detect_progress"
KEY_DETECT_THRESHOLD = "detect_threshold"
KEY_LABEL_NEXT = "label_next"  # the Detections view's suggestions (cards: <key>-<top|uncertain>-<rank>)
KEY_MAP = "map"  # prefix: view_key(KEY_MAP, view)
KEY_TILE_PANEL = "tile_panel"  # prefix: the opened tile's panel under a view's map
KEY_DOWNLOADS = "downloads"  # prefix: a view's download buttons
KEY_DATE = "date_filter"  # the sidebar's date range and quality limits
KEY_DATE_START = "date_start"
KEY_DATE_END = "date_end"
KEY_MAX_CLOUD = "max_cloud"
KEY_MAX_NODATA = "max_nodata"
KEY_DATE_SUMMARY = "date_summary"  # the limits in words and as CLI flags
KEY_TIMELINE = "timeline"  # prefix: a view's timeline of the opened tile (entries: view_key(..., "entry", i))
KEY_TIMELINE_REFERENCE = "timeline_reference"  # prefix: its "similarity to" chooser, per place
KEY_CHANGES_A = "changes_a"
KEY_CHANGES_B = "changes_b"
KEY_CHANGES_RESULTS = "changes_results"

# Widgets whose values outlive a switch to another tab (Streamlit forgets the state of widgets a run does not
# draw, and a closed tab draws nothing). Uploads cannot be kept this way (nor should they: bytes).
KEPT_KEYS = (KEY_TEXT, KEY_FEATURE_TEXT, KEY_FEATURE_MODE, KEY_FEATURE_ROWS, KEY_FEATURE_COLS, KEY_FEATURE_TILE,
             KEY_DETECT_BACKGROUND, KEY_DETECT_THRESHOLD, KEY_CHANGES_A, KEY_CHANGES_B)
RESULT_KEYS = {VIEW_TEXT: KEY_TEXT_RESULTS, VIEW_IMAGE: KEY_IMAGE_RESULTS, VIEW_LABELS: KEY_LABEL_RESULTS,
               VIEW_DETECT: KEY_DETECT_RESULTS, VIEW_CHANGES: KEY_CHANGES_RESULTS}
# What a view's ranking score is called on its cards and tile panel ("score" elsewhere).
SCORE_NAMES = {VIEW_CHANGES: "change"}


def view_key(prefix: str, view: str, *parts) -> str:
    """A widget key ``prefix-<view slug>[-part...]`` (a CSS class name too: letters, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", view.lower()).strip("-")
    return "-".join([prefix, slug, *(str(p) for p in parts)])
