"""The web app as a map (issue 16), end to end in headless Chromium, plus the map's building blocks.

A real tile table of the grid windows of two real GeoTIFFs (NAIP, UTM 14N, and Landsat, UTM 18N: true
footprints stored as the embedding job stores them) is served as the user serves it (``serve`` ->
``streamlit run``). The browser harness of ``tests/browser/test_webapp.py`` is reused with a stricter request
recorder: without ``--basemap`` every request the page and its map frame make goes to the app's own origin.
Coordinates are checked where the map draws them: each footprint's SVG path, read back through Leaflet's own
projection at a zoom where a pixel is a few metres.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import threading

import numpy as np
import pandas as pd
import pytest

from infra.local_stack import free_port
from rsclip.app.web.data import detection_runs, mapdata
from rsclip.app.web.keys import (KEY_AREA, KEY_AREA_GEOJSON, KEY_DETECT_PROGRESS, KEY_DETECT_RESULTS,
                                 KEY_DETECT_THRESHOLD, KEY_IMAGE_RESULTS, KEY_LABEL_NEXT, KEY_LABEL_RESULTS,
                                 KEY_TEXT_RESULTS, VIEW_DETECT, VIEW_LABELS, VIEW_TEXT, view_key)
from rsclip.app.server import serve, validate_basemap
from rsclip.app.web.layout import DEFAULT_K, GRID_COLUMNS
from rsclip.app.web.text import source_name
from rsclip.table import labels, rows, tiles
from rsclip.search import export
from rsclip.search.query import query, query_text, similar_tiles
from rsclip.search.review import review_detections
from rsclip.search.suggest import TOP, UNCERTAIN, WHY, suggest_labels
from tests.helpers.browser import (MAP_FRAME, UI_TIMEOUT_MS, assert_no_traceback, assert_only, click_map_tile,
                                   counts, download, expected_captions, geojson_rows, label_set_named, map_frame,
                                   open_app, poll, press, recorded_page, search_text, server_and_page, text_of,
                                   wait_captions, wait_idle, wait_images_loaded, wait_text)
from tests.helpers.geo import scene_grid_table

QUERY = "a lake beside fields"
DETECTION_TIMEOUT_MS = 600_000  # a private Ray starts on a loaded 2-core machine


@pytest.fixture(scope="module")
def geo_db(tiny_model, tmp_path_factory):
    """A local tile table of the 128 px grid windows of a NAIP and a Landsat GeoTIFF, with footprints."""
    db = tmp_path_factory.mktemp("mapdb") / "db"
    rows = scene_grid_table(db, tiny_model)
    return {"db": str(db), "rows": len(rows)}


map_server, page = server_and_page("geo_db", "map_server")


# ------------------------------------------------------------------------------------------ helpers


# For each tile id: zoom the map to the tile, then read its SVG path back into lon/lat through Leaflet's
# projection; ``px`` is the size of one screen pixel in degrees there (the drawing's precision).
DRAWN_FOOTPRINTS = """ids => {
    const m = rsclipMap.map, out = {};
    for (const id of ids) {
        const layer = rsclipMap.byId.get(id);
        if (!layer) { out[id] = null; continue; }
        m.fitBounds(layer.getBounds(), {animate: false, padding: [60, 60]});
        const a = m.containerPointToLatLng([0, 0]), b = m.containerPointToLatLng([1, 1]);
        const rings = [...document.querySelectorAll(`path.rsclip-tile[data-tile-id="${id}"]`)].map(p => {
            const n = p.getAttribute('d').match(/-?\\d+(\\.\\d+)?/g).map(Number), pts = [];
            for (let i = 0; i + 1 < n.length; i += 2) {
                const ll = m.layerPointToLatLng([n[i], n[i + 1]]); pts.push([ll.lng, ll.lat]);
            }
            return pts;
        });
        const thumb = document.querySelector(`img.rsclip-thumb[data-tile-id="${id}"]`);
        const path = document.querySelector(`path.rsclip-tile[data-tile-id="${id}"]`).getBoundingClientRect();
        const box = thumb && thumb.style.display !== 'none' ? thumb.getBoundingClientRect() : null;
        out[id] = {px: [Math.abs(b.lng - a.lng), Math.abs(b.lat - a.lat)], rings: rings,
                   thumb: box && [box.left - path.left, box.top - path.top, box.right - path.right,
                                  box.bottom - path.bottom],
                   src: thumb && thumb.src.slice(0, 23)};
    }
    return out;
}"""


def assert_drawn_at(drawn: dict, geometry) -> None:
    """The drawn rings of one tile are ``geometry``'s exterior rings, vertex for vertex, within 1.5 pixels."""
    import shapely

    expected = [np.asarray(p.exterior.coords)[:-1] for p in shapely.get_parts(geometry)]
    assert len(drawn["rings"]) == 1 and len(expected) == 1
    got, want = np.asarray(drawn["rings"][0]), expected[0]
    assert got.shape == want.shape, (got, want)
    tolerance = 1.5 * np.asarray(drawn["px"])
    for vertex in want:
        assert (np.abs(got - vertex) <= tolerance).all(axis=1).any(), (vertex, got, tolerance)


def text_hits(db: str, text: str, **filters) -> pd.DataFrame:
    return query_text(db, text, DEFAULT_K, **filters)


# ------------------------------------------------------------------------------------------ in the browser


def test_a_text_query_draws_its_hits_footprints_on_the_map(map_server, geo_db, page, tmp_path):
    open_app(page, map_server.url)
    search_text(page, QUERY)
    expected = text_hits(geo_db["db"], QUERY)
    frame = map_frame(page, len(expected))
    wait_captions(page, KEY_TEXT_RESULTS, expected)
    page.screenshot(path=str(tmp_path / "map_text_search.png"))

    # Each footprint is drawn where the table says the tile is, coloured by score, with its thumbnail.
    table = tiles.open_table(geo_db["db"])
    truth = rows.tile_footprints(expected, table)
    ids = list(expected[tiles.ID])
    drawn = frame.evaluate(DRAWN_FOOTPRINTS, ids)
    for tile_id, geometry in zip(ids, truth):
        assert_drawn_at(drawn[tile_id], geometry)
        assert drawn[tile_id]["src"] == mapdata.DATA_JPEG[:23]  # the preview, from the page's own data
        assert max(abs(v) for v in drawn[tile_id]["thumb"]) <= 3.0, drawn[tile_id]["thumb"]  # at the footprint
    colors = frame.evaluate("() => [...rsclipMap.byId.values()].map(g => g.getLayers()[0].options.fillColor)")
    assert colors == mapdata.score_colors(expected["score"].to_numpy())

    # Hovering shows score, source and window as text; a click opens the tile's panel.
    best = expected.iloc[0]
    click_map_tile(page, frame, best[tiles.ID])
    frame.locator(".leaflet-tooltip").first.wait_for(timeout=UI_TIMEOUT_MS)
    tip = frame.locator(".leaflet-tooltip").first.inner_text()
    assert f"score {best['score']:.3f}" in tip and best[tiles.URI] in tip
    assert f"x={best[tiles.X]} y={best[tiles.Y]}" in tip
    panel = page.locator(f".st-key-{view_key('tile_panel', VIEW_TEXT)}")
    wait_text(page, panel, contains=(best[tiles.URI], f"score {best['score']:.3f}", f"lon {best[tiles.LON_MIN]:.4f}"))
    wait_images_loaded(page, f".st-key-{view_key('tile_panel', VIEW_TEXT)}", 1)
    page.locator(f".st-key-{view_key('tile_panel', VIEW_TEXT)}").screenshot(path=str(tmp_path / "tile_panel.png"))
    panel.get_by_role("button", name="Similar tiles").click()
    page.get_by_text("Tiles similar to").wait_for(timeout=UI_TIMEOUT_MS)
    similar = similar_tiles(geo_db["db"], best[tiles.ID], DEFAULT_K)
    wait_captions(page, KEY_IMAGE_RESULTS, similar)
    map_frame(page, len(similar))
    assert_no_traceback(page)


def draw_rectangle(pg, frame, corners) -> list:
    """Drag a rectangle between two container points of the map; returns their [lon, lat]."""
    frame.get_by_role("button", name="Draw a rectangle").click()
    box = pg.locator(MAP_FRAME).first.bounding_box()
    points = [frame.evaluate("p => { const ll = rsclipMap.map.containerPointToLatLng(p); return [ll.lng, ll.lat]; }",
                             list(c)) for c in corners]
    (x0, y0), (x1, y1) = corners
    pg.mouse.move(box["x"] + x0, box["y"] + y0)
    pg.mouse.down()
    pg.mouse.move(box["x"] + (x0 + x1) / 2, box["y"] + (y0 + y1) / 2, steps=4)
    pg.mouse.move(box["x"] + x1, box["y"] + y1, steps=4)
    pg.mouse.up()
    return points


def area_snippet(pg) -> dict:
    """The drawn area's GeoJSON as the sidebar shows it, once it is there in full (a snippet missing or
    half-drawn is "not yet")."""
    def read() -> dict | None:
        try:
            return json.loads(text_of(pg.locator(f".st-key-{KEY_AREA_GEOJSON} code")) or "")
        except ValueError:
            return None

    snippet = poll(pg, read, lambda got: got is not None)
    assert snippet is not None, "no area snippet was drawn"
    return snippet


def test_drawing_an_area_restricts_every_view_to_it(map_server, geo_db, page, tmp_path):
    import shapely
    from shapely.geometry import shape

    open_app(page, map_server.url)
    search_text(page, QUERY)
    everywhere = text_hits(geo_db["db"], QUERY)
    frame = map_frame(page, len(everywhere))
    naip = everywhere[everywhere[tiles.URI].str.contains("m_4709963")]
    frame.evaluate("id => rsclipMap.map.fitBounds(rsclipMap.byId.get(id).getBounds().pad(2), {animate: false})",
                   naip[tiles.ID].iloc[0])
    (lon0, lat0), (lon1, lat1) = draw_rectangle(page, frame, [(250, 120), (650, 380)])

    area = area_snippet(page)
    drawn = shape(area)
    px = frame.evaluate("() => { const m = rsclipMap.map, a = m.containerPointToLatLng([0, 0]), "
                        "b = m.containerPointToLatLng([1, 1]); return Math.abs(b.lng - a.lng); }")
    assert drawn.geom_type == "Polygon" and len(drawn.exterior.coords) == 5
    np.testing.assert_allclose(drawn.bounds, (min(lon0, lon1), min(lat0, lat1), max(lon0, lon1), max(lat0, lat1)),
                               atol=2 * px)
    inside = text_hits(geo_db["db"], QUERY, polygon=area)
    wait_captions(page, KEY_TEXT_RESULTS, inside)
    assert set(inside[tiles.ID]) != set(everywhere[tiles.ID])
    table = tiles.open_table(geo_db["db"])
    assert all(g.intersects(drawn) for g in rows.tile_footprints(inside, table))
    outside = [g for g in rows.tile_footprints(query_text(geo_db["db"], QUERY, 100), table)
               if not g.intersects(drawn)]
    assert outside  # the area left tiles out
    page.screenshot(path=str(tmp_path / "map_drawn_area.png"))

    # The image view searches the same area.
    page.locator(f".st-key-{KEY_TEXT_RESULTS}-hit-1").get_by_role("button", name="Similar tiles").click()
    page.get_by_text("Tiles similar to").wait_for(timeout=UI_TIMEOUT_MS)
    similar = similar_tiles(geo_db["db"], inside[tiles.ID].iloc[0], DEFAULT_K, polygon=area)
    wait_captions(page, KEY_IMAGE_RESULTS, similar)

    # A polygon by clicks; then "Clear area" searches everywhere again.
    page.get_by_role("tab", name=VIEW_TEXT).click()
    wait_idle(page)  # the image view's map stays on the page until the run that draws the text view removes it
    map_frame(page)
    page.frame_locator(MAP_FRAME).first.get_by_role("button", name="Draw a polygon").click()  # found anew if redrawn
    box = page.locator(MAP_FRAME).first.bounding_box()
    clicks = [(300, 150), (600, 170), (450, 400), (300, 150)]
    for x, y in clicks:
        page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function("n => { const c = document.querySelector(`.st-key-${n} code`); "
                           "try { return c && JSON.parse(c.textContent).coordinates[0].length === 4; } "
                           "catch (e) { return false; } }",  # half-drawn text: not yet
                           arg=KEY_AREA_GEOJSON, timeout=UI_TIMEOUT_MS)
    triangle = shape(area_snippet(page))
    assert len(shapely.get_coordinates(triangle)) == 4 and triangle.area > 0
    wait_captions(page, KEY_TEXT_RESULTS, text_hits(geo_db["db"], QUERY, polygon=area_snippet(page)))
    page.get_by_role("button", name="Clear area").click()
    page.locator(f".st-key-{KEY_AREA}").get_by_text("Draw a rectangle or polygon").wait_for(timeout=UI_TIMEOUT_MS)
    wait_captions(page, KEY_TEXT_RESULTS, everywhere)
    assert_no_traceback(page)


FORGED = """value => window.parent.postMessage({isStreamlitMessage: true, type: 'streamlit:setComponentValue',
                                             value: value, dataType: 'json'}, '*')"""


def test_a_forged_map_event_is_refused_and_changes_nothing(map_server, geo_db, page):
    """What the map sends is checked like any visitor input: a script in the page posting its own events
    (out-of-range latitudes, too many vertices, a tile id that is SQL) gets a message, the search stays."""
    open_app(page, map_server.url)
    search_text(page, QUERY)
    expected = text_hits(geo_db["db"], QUERY)
    map_frame(page, len(expected))
    ring = [[-99.1 + 0.001 * np.cos(t), 47.0 + 0.001 * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 2000)]
    forged = [
        ({"event": "area", "nonce": "a1", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [0, 100], [1, 1],
                                                                                          [0, 0]]]}},
         "outside [-90, 90]"),
        ({"event": "area", "nonce": "a2", "geometry": {"type": "Polygon", "coordinates": [ring + [ring[0]]]}},
         f"more than {mapdata.MAX_AREA_VERTICES:,}"),
        ({"event": "area", "nonce": "a3", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0],
                                                                                          [0, 1], [0, 0]]]}},
         "not valid"),
        ({"event": "select", "nonce": "s1", "id": "' OR '1'='1"}, "not a tile id"),
    ]
    for value, message in forged:
        map_frame(page).evaluate(FORGED, value)
        page.get_by_text(message).first.wait_for(timeout=UI_TIMEOUT_MS)
        assert page.locator(f".st-key-{KEY_AREA_GEOJSON}").count() == 0
    wait_captions(page, KEY_TEXT_RESULTS, expected)
    assert_no_traceback(page)


def test_label_tiles_find_more_and_review_detections(map_server, geo_db, page, tmp_path):
    """+ / - on cards and on the map's tile panel write label rows the Python API reads back; "Find more like
    these" leaves the labelled tiles out; a detection run (a private Ray, in the background) gives detections
    reviewed above a threshold on the map and as a list, where a mistake is labelled in turn."""
    db, name = geo_db["db"], "lakes"
    open_app(page, map_server.url)
    label_set_named(page, name)
    search_text(page, QUERY)
    hits = text_hits(db, QUERY)
    frame = map_frame(page, len(hits))
    results = f".st-key-{KEY_TEXT_RESULTS}"
    for rank, sign, done in ((1, "+", "1 positive, 0 negative"), (2, "+", "2 positive, 0 negative"),
                             (3, "\u2212", "2 positive, 1 negative"), (4, "\u2212", "2 positive, 2 negative")):
        press(page, f"{results}-hit-{rank}", sign)
        counts(page, done)
    fifth = hits[tiles.ID].iloc[4]
    click_map_tile(page, frame, fifth)
    press(page, f".st-key-{view_key('tile_panel', VIEW_TEXT)}", "+")
    counts(page, "3 positive, 2 negative")
    press(page, f"{results}-hit-2", "+")  # pressed again: the label is removed
    counts(page, "2 positive, 2 negative")
    stored = labels.read_labels(db, name)
    values = dict(zip(stored[tiles.ID], stored[labels.VALUE]))
    ids = list(hits[tiles.ID])
    assert values == {ids[0]: 1, ids[4]: 1, ids[2]: -1, ids[3]: -1}

    page.get_by_role("tab", name=VIEW_LABELS).click()
    page.get_by_role("button", name="Find more like these").click()
    more = query(db, positive=[ids[0], ids[4]], negative=[ids[2], ids[3]], k=DEFAULT_K)
    wait_captions(page, KEY_LABEL_RESULTS, more)
    assert not set(more[tiles.ID]) & set(values)
    map_frame(page, len(more))
    labelled = geojson_rows(download(page, VIEW_LABELS, "labels", "geojson"))
    assert {f["properties"][tiles.ID]: f["properties"]["value"] for f in labelled} == values

    page.get_by_role("tab", name=VIEW_DETECT).click()
    page.get_by_role("button", name="Run detector").click()
    progress = page.locator(f".st-key-{KEY_DETECT_PROGRESS}")
    progress.get_by_text(f"Detecting {name}").wait_for(timeout=UI_TIMEOUT_MS)  # running, in the background
    page.get_by_role("button", name="Run detector").click()  # a second run on the table is refused meanwhile
    page.get_by_text("one run per table at a time").wait_for(timeout=UI_TIMEOUT_MS)
    progress.get_by_text("finished").wait_for(timeout=DETECTION_TIMEOUT_MS)
    wait_text(page, progress, contains=("finished", f"{geo_db['rows']} of {geo_db['rows']} tiles scored"))

    page.locator(f".st-key-{KEY_DETECT_THRESHOLD} input[type=range]").focus()
    page.keyboard.press("Home")  # threshold 0: every tile
    found = review_detections(db, name, min_score=0.0)
    assert len(found) == geo_db["rows"] and found["score"].is_monotonic_decreasing
    frame = map_frame(page, len(found))
    wait_captions(page, KEY_DETECT_RESULTS, found.head(DEFAULT_K))
    page.screenshot(path=str(tmp_path / "map_detections.png"))
    exported = geojson_rows(download(page, VIEW_DETECT, "detections", "geojson"))
    assert [f["properties"][tiles.ID] for f in exported] == list(found[tiles.ID])

    mistake = next(i for i in found[tiles.ID] if i not in values)  # the best unlabelled detection: say "no"
    rank = list(found[tiles.ID]).index(mistake) + 1
    press(page, f".st-key-{KEY_DETECT_RESULTS}-hit-{rank}", "\u2212")
    counts(page, "2 positive, 3 negative")
    assert labels.read_labels(db, name).set_index(tiles.ID)[labels.VALUE][mistake] == -1

    suggested = suggest_labels(db, name, k=GRID_COLUMNS)  # label next: labelled in place, then gone from the panel
    assert mistake not in set(suggested[tiles.ID]) and set(suggested[WHY]) == {TOP, UNCERTAIN}
    wait_suggestions(page, suggested)
    unsure = suggested[suggested[WHY] == UNCERTAIN][tiles.ID].iloc[0]
    press(page, f".st-key-{KEY_LABEL_NEXT}-{UNCERTAIN}-1", "+")
    counts(page, "3 positive, 3 negative")
    assert labels.read_labels(db, name).set_index(tiles.ID)[labels.VALUE][unsure] == 1
    after = suggest_labels(db, name, k=GRID_COLUMNS)
    assert unsure not in set(after[tiles.ID])
    wait_suggestions(page, after)
    assert "Session State API" not in page.locator("body").inner_text()  # no widget warning either
    assert_no_traceback(page)


def wait_suggestions(page, suggested: pd.DataFrame) -> None:
    """Wait until the Label next panel shows ``suggested``, kind by kind, in order."""
    def shown():
        out = {}
        for kind in (TOP, UNCERTAIN):
            texts = page.locator(f"[class*='st-key-{KEY_LABEL_NEXT}-{kind}-']").all_inner_texts()
            found = [re.search(r"(\S+ · x=\d+ y=\d+ \d+x\d+ px)", t) for t in texts]
            if None in found:
                return None
            out[kind] = [m.group(1) for m in found]
        return out

    want = {kind: expected_captions(suggested[suggested[WHY] == kind]) for kind in (TOP, UNCERTAIN)}
    assert poll(page, shown, lambda got: got == want) == want


def test_downloads_are_what_the_export_writes(map_server, geo_db, page, tmp_path):
    import geopandas as gpd

    open_app(page, map_server.url)
    search_text(page, QUERY)
    expected = text_hits(geo_db["db"], QUERY)
    map_frame(page, len(expected))
    got = download(page, VIEW_TEXT, "tiles", "geojson")
    written = export.export(geo_db["db"], str(tmp_path / "hits.geojson"), query=QUERY, k=DEFAULT_K)
    assert written.rows == len(expected)
    features, reference = geojson_rows(got), geojson_rows((tmp_path / "hits.geojson").read_bytes())
    assert [f["properties"][tiles.ID] for f in features] == list(expected[tiles.ID])
    scores = [f["properties"].pop("score") for f in features]
    np.testing.assert_allclose(scores, expected["score"], atol=1e-5)
    np.testing.assert_allclose(scores, [f["properties"].pop("score") for f in reference], atol=1e-5)
    assert features == reference  # the same file but for the last bits of the scores

    parquet = gpd.read_parquet(io.BytesIO(download(page, VIEW_TEXT, "tiles", "geoparquet")))
    assert list(parquet[tiles.ID]) == list(expected[tiles.ID])
    truth = rows.tile_footprints(expected, tiles.open_table(geo_db["db"]))
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(parquet.geometry, truth))
    assert_no_traceback(page)


class TileServer(http.server.ThreadingHTTPServer):
    """A local XYZ tile server: every path answers one grey PNG; the paths asked are kept."""

    def __init__(self):
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), (200, 200, 200)).save(buffer, format="PNG")
        png, asked = buffer.getvalue(), []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                asked.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        self.asked = asked


def test_a_basemap_is_fetched_only_from_the_server_given(geo_db, browser):
    tiles_server = TileServer()
    threading.Thread(target=tiles_server.serve_forever, daemon=True).start()
    template = f"http://127.0.0.1:{tiles_server.server_port}/{{z}}/{{x}}/{{y}}.png"
    web = serve(geo_db["db"], port=free_port(), block=False, basemap=template)
    pg, requests = recorded_page(browser)
    try:
        open_app(pg, web.url)
        search_text(pg, QUERY)
        frame = map_frame(pg, DEFAULT_K)
        frame.wait_for_function("() => document.querySelectorAll('img.leaflet-tile-loaded').length > 0",
                                timeout=UI_TIMEOUT_MS)
        assert tiles_server.asked and all(re.fullmatch(r"/\d+/\d+/\d+\.png", p) for p in tiles_server.asked)
    finally:
        pg.context.close()
        web.stop()
        tiles_server.shutdown()
    assert_only(requests, {web.url.rstrip("/"), f"http://127.0.0.1:{tiles_server.server_port}"})


def test_a_table_without_bounds_keeps_the_grid(tiny_model, rsicd_files, tmp_path, monkeypatch):
    """Chips without georeference: no map, no area panel; the results are the grid of cards."""
    from streamlit.testing.v1 import AppTest

    from rsclip.app.web.keys import KEY_TEXT
    from rsclip.app.server import APP_SCRIPT
    from tests.helpers import spread_files, write_scene_table

    write_scene_table(tmp_path / "db", tiny_model, spread_files(rsicd_files, 8))
    monkeypatch.setattr("sys.argv", [str(APP_SCRIPT), "--db", str(tmp_path / "db")])
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=UI_TIMEOUT_MS / 1000)
    app.run()
    app.text_input(key=KEY_TEXT).input("a harbour").run()
    assert not app.exception, [e.value for e in app.exception]
    assert not [e for e in app.get("component_instance")]  # no map
    expected = query_text(str(tmp_path / "db"), "a harbour", DEFAULT_K)
    shown = [m.value for m in app.caption if " · x=0 y=0 150x150 px" in m.value]
    assert [s.split(" · ")[0].replace("\\", "") for s in shown] == [source_name(u) for u in expected[tiles.URI]]
    assert not any("Draw a rectangle" in c.value for c in app.caption)


# ------------------------------------------------------------------------------------------ building blocks


def event(**fields) -> dict:
    return {"nonce": "1", **fields}


def test_map_events_are_checked_before_use():
    square = {"type": "Polygon", "coordinates": [[[10, 10], [11, 10], [11, 11], [10, 11], [10, 10]]]}
    assert mapdata.parse_event(None) is None
    got = mapdata.parse_event(event(event="area", geometry=square))
    assert got.kind == "area" and got.area.geometry.bounds == (10, 10, 11, 11)
    assert mapdata.area_geojson(got.area)["coordinates"][0][0] == [10.0, 10.0]
    assert mapdata.parse_event(event(event="select", id="0" * 32)).tile_id == "0" * 32
    assert mapdata.parse_event(event(event="clear")).kind == "clear"
    across = {"type": "Polygon", "coordinates": [[[179, 0], [181, 0], [181, 1], [179, 1], [179, 0]]]}
    assert mapdata.parse_event(event(event="area", geometry=across)).area.geometry.geom_type == "MultiPolygon"
    many = [[np.cos(t), np.sin(t)] for t in np.linspace(0, 2 * np.pi, mapdata.MAX_AREA_VERTICES + 1)]
    for value, message in (
        ("select", "not an event"),
        ({"event": "clear"}, "nonce"),
        (event(event="clear", nonce="x" * 65), "nonce"),
        (event(event="select", id="'; DROP TABLE tiles; --"), "not a tile id"),
        (event(event="select", id="A" * 32), "not a tile id"),
        (event(event="area", geometry={"type": "Point", "coordinates": [0, 0]}), "Polygon or MultiPolygon"),
        (event(event="area", geometry={"type": "Polygon", "coordinates": [[[0, 0], [0, 91], [1, 1], [0, 0]]]}),
         "outside"),
        (event(event="area", geometry={"type": "Polygon", "coordinates": [many + [many[0]]]}), "vertices"),
        (event(event="area", geometry={"type": "Polygon", "coordinates": [[[0, 0]] * 20_000]}), "characters"),
        (event(event="area", geometry="not json"), "WKT"),
        (event(event="area", geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}),
         "not valid"),
        (event(event="eval", code="x"), "unknown event"),
    ):
        with pytest.raises(ValueError, match=message):
            mapdata.parse_event(value)


def test_map_features_are_the_tiles_footprints_in_rank_order(geo_db):
    expected = text_hits(geo_db["db"], QUERY)
    table = tiles.open_table(geo_db["db"])
    shapes = mapdata.footprints_of(expected, table)
    collection = mapdata.tile_features(expected, shapes)
    features = collection["features"]
    assert [f["properties"]["id"] for f in features] == list(expected[tiles.ID])
    assert [f["properties"]["rank"] for f in features] == list(range(1, len(expected) + 1))
    for feature, shape in zip(features, shapes):
        np.testing.assert_allclose(feature["geometry"]["coordinates"][0], np.asarray(shape.exterior.coords))
    colors = [f["properties"]["color"] for f in features]
    assert colors[0] == mapdata.SCORE_COLORS[-1] and colors[-1] == mapdata.SCORE_COLORS[0]
    assert mapdata.score_colors(np.array([0.3, 0.3])) == [mapdata.SCORE_COLORS[2]] * 2
    assert mapdata.version_of(collection) != mapdata.version_of(mapdata.tile_features(expected.head(3), shapes))
    lon_min, lat_min, lon_max, lat_max = mapdata.table_extent(table)
    frame = table.to_pandas()
    assert (lon_min, lat_max) == (frame[tiles.LON_MIN].min(), frame[tiles.LAT_MAX].max())


def test_thumbnails_are_placed_at_the_window_corners(geo_db):
    """A thumbnail's three corners are the raster window's corners in WGS84, i.e. corners of its footprint."""
    from rsclip.app.web.data.previews import read_preview, window_corners
    from rsclip.geo.windows import Window

    row = text_hits(geo_db["db"], QUERY).iloc[0]
    window = Window(*(int(row[c]) for c in tiles.WINDOW_COLUMNS))
    corners = np.asarray(window_corners(row[tiles.URI], window))
    footprint = rows.tile_footprints(pd.DataFrame([row]), tiles.open_table(geo_db["db"]))[0]
    vertices = np.asarray(footprint.exterior.coords)
    for corner in corners:
        assert np.abs(vertices - corner).max(axis=1).min() < 1e-9
    assert corners[0][1] > corners[2][1] and corners[1][0] > corners[0][0]  # north-up: top-left, top-right, bottom-left
    uri, size = mapdata.thumbnail_uri(read_preview(row[tiles.URI], window))
    assert uri.startswith(mapdata.DATA_JPEG) and max(size) <= mapdata.THUMBNAIL_SIDE
    assert mapdata.bounds_corners({tiles.LON_MIN: 1.0, tiles.LAT_MIN: 2.0, tiles.LON_MAX: 3.0, tiles.LAT_MAX: 4.0}) == [
        [1.0, 4.0], [3.0, 4.0], [1.0, 2.0]]
    assert window_corners("chip.jpg", window) is None


def test_basemap_templates_are_checked():
    assert validate_basemap(None) is None and validate_basemap("  ") is None
    good = "https://tile.example.org/{z}/{x}/{y}.png"
    assert validate_basemap(good) == good
    for bad, message in (("javascript:alert(1)//{z}{x}{y}", "http"), ("file:///etc/{z}/{x}/{y}", "http"),
                         ("https://a/{z}/{x}.png", "lacks {y}"), ('https://a/{z}/{x}/{y}" onerror="x', "quotes"),
                         ("https://a/" + "x" * 600 + "/{z}/{x}/{y}", "longer")):
        with pytest.raises(ValueError, match=re.escape(message)):
            validate_basemap(bad)


def test_serve_passes_the_basemap_and_the_cli_refuses_a_bad_one(capsys, tmp_path):
    from rsclip.app.cli import main
    from rsclip.app.server import WebConfig, streamlit_command

    cmd = streamlit_command(WebConfig("db", basemap="https://t/{z}/{x}/{y}.png", ray_address="10.0.0.1:6379"),
                            "127.0.0.1", 8501)
    assert cmd[cmd.index("--") + 1:] == ["--db", "db", "--table", "tiles", "--basemap", "https://t/{z}/{x}/{y}.png",
                                        "--ray-address", "10.0.0.1:6379"]
    assert "--basemap" not in streamlit_command(WebConfig("db"), "127.0.0.1", 8501)
    assert main(["serve", str(tmp_path / "db"), "--basemap", "ftp://x/{z}/{x}/{y}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "basemap" in err[0]


def test_detection_runs_check_what_a_visitor_chose(tmp_path):
    for label, background, message in (("a'; DROP", 0, "label must be"), ("x" * 65, 0, "label must be"),
                                       ("ok", -1, "background"),
                                       ("ok", detection_runs.MAX_BACKGROUND + 1, "background"),
                                       ("ok", True, "background")):
        with pytest.raises(ValueError, match=message):
            detection_runs.start_run(str(tmp_path), "tiles", label, background=background)
    assert detection_runs.current_run(str(tmp_path), "tiles") is None  # nothing was started
    run = detection_runs.DetectionRun(str(tmp_path), "tiles", "ok", 0)
    for line in ('{"event": "plan", "parts": 4, "done_before": 0}', '{"event": "part"}', "Ray says hello\n",
                 '{"event": "rows", "rows": 128}', '["not", "an", "event"]'):
        run.read(line)
    assert (run.parts, run.parts_done, run.rows, run.fraction) == (4, 1, 128, 0.25)
    assert list(run.tail) == ["Ray says hello"]


def test_the_map_ships_in_the_package(tmp_path):
    """The wheel holds the map's files (package-data): an installed rsclip serves its map offline too."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from rsclip.app.web.views.maps import STATIC_DIR
    from tests.helpers import ROOT

    source = tmp_path / "src"
    shutil.copytree(ROOT / "rsclip", source / "rsclip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("rsclip-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    ours = {f"rsclip/app/web/static/map/{p.relative_to(STATIC_DIR).as_posix()}"
            for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert {"rsclip/app/web/static/map/leaflet/leaflet.js", "rsclip/app/web/static/map/leaflet/LICENSE",
            "rsclip/app/web/static/map/map.js", "rsclip/app/web/static/map/index.html"} <= ours
    assert ours <= shipped, sorted(ours - shipped)
    leaflet = (STATIC_DIR / "leaflet" / "leaflet.js").read_text()
    assert "sourceMappingURL" not in leaflet and 'version="1.9.4"' in leaflet
    for page in ("index.html", "map.js", "map.css"):  # nothing names another origin
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", (STATIC_DIR / page).read_text(), re.I), page
