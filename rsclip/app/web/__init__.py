"""The web app: search a tile table by text, image or examples, see the hits on a map, label them, run and
review detections, download GeoJSON/GeoParquet; in Streamlit.

:func:`rsclip.app.server.serve` starts it (``rsclip serve``): Streamlit runs :mod:`rsclip.app.web.page` as a
script. The package holds the page and its views (:mod:`rsclip.app.web.views`, Streamlit), what they show as
plain data (:mod:`rsclip.app.web.data`, no Streamlit), the page's names (:mod:`~rsclip.app.web.keys`), sizes
(:mod:`~rsclip.app.web.layout`), text helpers (:mod:`~rsclip.app.web.text`), per-run context
(:mod:`~rsclip.app.web.context`) and caches (:mod:`~rsclip.app.web.caches`), and the map's files
(``static/map``). It never imports the command line (:mod:`rsclip.app.cli`).

The views (their modules say more):

1. **Text search** (:mod:`rsclip.app.web.views.search`): a text query ranks the table's tiles. The hits' true
   WGS84 footprints are drawn on a map coloured by score, with thumbnails when zoomed in; a click opens a
   tile's panel (large preview, bounds, "Similar tiles", label buttons) (:mod:`rsclip.app.web.views.maps`,
   :mod:`rsclip.app.web.views.results`). Below, a card per hit: its preview cut from the source object by the tile
   window, score, window, bounds, "Similar tiles", "+" and "-". Tables without bounds get the cards alone.
2. **Image search**: an uploaded image, or the "Similar tiles" button of any hit, ranks tiles by image
   similarity (a clicked tile is searched by its stored embedding and left out of its own results).
3. **Labels**: the label set chosen or named in the sidebar (:mod:`rsclip.app.web.views.labelling`), its tiles,
   and "Find more like these" (the example search of its positives and negatives).
4. **Detections** (:mod:`rsclip.app.web.views.detections`): run the detector for the label set in the background
   (:mod:`rsclip.app.web.data.detection_runs`) and review its detections above a threshold, best first.
5. **Changes** (:mod:`rsclip.app.web.views.changes`): two dates; the places whose embedding moved most between
   them, on the map coloured by change (``rsclip.changes``).
6. **Feature finder** (:mod:`rsclip.app.web.views.feature_finder`): an uploaded image is cut into a patch grid
   and each patch scored against a typed feature; the grid of probabilities and a heatmap overlay are shown.

Where and when to search (sidebar, every view): a typed bounding box and/or an area drawn on any map; a
date range and, where the table records them, cloud cover and nodata limits
(:mod:`rsclip.app.web.views.date_filter`). A tile opened on a map shows its timeline: the tiles of its place
by date with their similarity (:mod:`rsclip.app.web.views.timeline`). Results, labels, detections and changes
download as GeoJSON or GeoParquet (:mod:`rsclip.app.web.views.downloads`).

Searches run on a resident copy of the table (``query(..., resident=True)``, :mod:`rsclip.resident`): the
server is long-lived, so it loads the table version once (~2.2 KB of memory per 512-d row) and answers each
query from memory plus the index's candidate row ids.

What a visitor sends is bounded and never read as a path: typed text is encoded as text
(``rsclip.search.encoding.Text``: ``file:///...`` or ``s3://...`` typed in a box is words), at most
``MAX_TEXT_CHARS``; uploads are opened only as the format their name claims, within the limits of
:mod:`rsclip.app.web.data.uploads`, and a session's uploads are capped in count and bytes, each replaced one
released (:mod:`rsclip.app.web.views.uploader`); the bounding box is parsed into four floats and checked by
:func:`rsclip.query.validate_bbox`; an area drawn on the map is bounded and validated as a WGS84 polygon
(:mod:`rsclip.app.web.data.mapdata`); typed dates are ISO dates of at most ten characters, checked before use
(:mod:`rsclip.app.web.data.timedata`); a typed label-set name must match the labels module's pattern;
detection runs and downloads are bounded. No SQL is built here from anything a visitor sends: searches take
validated filters, tile ids are checked against :data:`rsclip.table.rows.TILE_ID_PATTERN`. Object names, table
values, upload names and messages are shown as plain text (:func:`rsclip.app.web.text.escape_markdown`; on the
map, ``textContent``): nothing in them makes a browser fetch or render.
"""
