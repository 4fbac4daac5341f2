"""Dates and timelines in the web app (issue 17, item 5), end to end in headless Chromium, plus the date
control's building blocks.

A real tile table of the two NAIP clips m_4709963_se_14_1 of 2009-08-18 and 2020-08-31 (one place, two
years; their dates read from their names as ``--datetime-from-name '_(?P<datetime>\\d{8})\\.tif$'`` reads
them) and the Landsat clip (its file records no date: an undated tile) is served as the user serves it. The
sidebar's date range must give every view the rows the Python API gives for ``date=...``; the timeline of
a clicked tile must list ``rsclip.timeline``'s tiles in date order with its similarities; the Changes view
must show ``rsclip.changes``. As in tests/browser/test_map.py, every request the page makes must go to the
app's own origin.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import rsclip
from rsclip.app.web.data import timedata
from rsclip.app.web.keys import (KEY_CHANGES_RESULTS, KEY_DATE_END, KEY_DATE_START, KEY_DATE_SUMMARY,
                                 KEY_DETECT_RESULTS, KEY_DETECT_THRESHOLD, KEY_IMAGE_RESULTS, KEY_LABEL_RESULTS,
                                 KEY_MAX_CLOUD, KEY_MAX_NODATA, KEY_TEXT, KEY_TEXT_RESULTS, STATE_SELECTED, VIEW_CHANGES,
                                 VIEW_DETECT, VIEW_LABELS, VIEW_TEXT, view_key)
from rsclip.app.web.layout import DEFAULT_K
from rsclip.app.web.views.date_filter import NO_COLUMNS
from rsclip.app.web.views.timeline import NO_DATES
from rsclip.geo import dates, raster
from rsclip.table import detections, tiles
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.ingest import listing
from rsclip.search.query import query, query_text, similar_tiles
from rsclip.search.review import review_detections
from tests.helpers.browser import (UI_TIMEOUT_MS, assert_no_traceback, click_map_tile, counts, download, enter_text,
                                   geojson_rows, label_set_named, map_frame, open_app, poll, press, search_text,
                                   server_and_page, text_of, wait_captions, wait_idle, wait_text)
from tests.helpers import stac as H
from tests.helpers import GEOTIFF_DIR, require_shared_data

QUERY = "a lake beside fields"
NAME_PATTERN = r"_(?P<datetime>\d{8})\.tif$"
LABEL = "fields"
YEAR_2009 = ("2009-01-01", "2009-12-31")
UTC = dt.timezone.utc


def write_detections(db: str, frame: pd.DataFrame, label: str) -> None:
    """Every tile of ``frame`` detected as ``label``, scores spread over (0.1, 0.9) (no detector run)."""
    n = len(frame)
    batch = pa.Table.from_pydict({
        detections.KEY: [detections.detection_key(label, i) for i in frame[tiles.ID]], tiles.ID: list(frame[tiles.ID]),
        detections.LABEL: [label] * n, detections.MODEL_VERSION: ["v"] * n,
        detections.SCORE: np.linspace(0.1, 0.9, n).astype(np.float32),
        detections.LOGIT: np.log(np.linspace(0.1, 0.9, n) / (1 - np.linspace(0.1, 0.9, n))),
        **{c: frame[c].to_numpy() for c in tiles.BOUNDS_COLUMNS}, detections.TIME: [dt.datetime.now(UTC)] * n,
    }, schema=detections.DETECTIONS_SCHEMA)
    detections.upsert(detections.open_detections(db, create=True), batch)


@pytest.fixture(scope="module")
def time_db(tiny_model, tmp_path_factory):
    """A local tile table of the 128 px windows of both NAIP clips (dated by name) and the Landsat clip
    (undated), embedded as the job does; every tile detected as :data:`LABEL`."""
    require_shared_data()
    pattern = dates.name_pattern(NAME_PATTERN)
    sources = [listing.ArchiveFile(str(GEOTIFF_DIR / name), (GEOTIFF_DIR / name).stat().st_size,
                                   datetime=dates.from_name(name, pattern))
               for name in (H.NAIP_2009, H.NAIP_2020, H.LANDSAT)]
    db = tmp_path_factory.mktemp("timedb") / "db"
    H.embed_sources(db, tiny_model, sources, raster.RasterOptions(tile_size=128, max_chip=64))
    frame = tiles.open_table(db).to_pandas()
    write_detections(str(db), frame, LABEL)
    return {"db": str(db), "frame": frame}


time_server, page = server_and_page("time_db", "time_server")


# ------------------------------------------------------------------------------------------ helpers


def type_date(pg, label: str, text: str) -> None:
    box = pg.locator("section[data-testid='stSidebar']").get_by_label(label, exact=True)
    enter_text(pg, box, text)


def text_hits(db: str, **filters) -> pd.DataFrame:
    return query_text(db, QUERY, DEFAULT_K, **filters)


def entry_texts(pg, view: str, count: int) -> list[str | None]:
    """The text of the first ``count`` entries of ``view``'s timeline as drawn now (None: not drawn yet)."""
    return [text_of(pg.locator(f".st-key-{view_key('timeline', view, 'entry', i)}")) for i in range(1, count + 1)]


def expected_entries(line: pd.DataFrame) -> list[tuple[str, str]]:
    return [(timedata.describe_time(r[tiles.DATETIME]), f"similarity {r['similarity']:.3f}")
            for r in line.to_dict("records")]


def assert_timeline(pg, view: str, line: pd.DataFrame) -> None:
    """``view``'s timeline shows exactly ``line``: its dates and similarities, in order."""
    want = expected_entries(line)

    def shown() -> list[tuple[str, ...]] | None:
        """The entries' (date, similarity); None while one is missing or drawn without them ("not yet")."""
        found = [re.search(r"(\S+) · (similarity -?\d\.\d{3})", t or "") for t in entry_texts(pg, view, len(want))]
        return None if None in found else [m.groups() for m in found]

    assert poll(pg, shown, lambda got: got == want) == want
    pg.locator(f".st-key-{view_key('timeline', view, 'entry', len(want) + 1)}").wait_for(state="detached",
                                                                                    timeout=UI_TIMEOUT_MS)


# ------------------------------------------------------------------------------------------ in the browser


def test_a_date_range_sets_the_filters_of_every_view(time_server, time_db, page, tmp_path):
    db, frame = time_db["db"], time_db["frame"]
    open_app(page, time_server.url)
    sidebar = page.locator("section[data-testid='stSidebar']")
    sidebar.get_by_text("2009-08-18 to 2020-08-31").wait_for(timeout=UI_TIMEOUT_MS)
    sidebar.get_by_text("Max nodata share").wait_for(timeout=UI_TIMEOUT_MS)
    wait_idle(page, start_ms=0)  # the sidebar drawn to its end
    assert sidebar.get_by_text("Max cloud cover").count() == 0  # no tile of this table records cloud cover
    assert sidebar.get_by_text("Max nodata share").count() == 1  # every tile records its nodata share
    type_date(page, "From", YEAR_2009[0])
    type_date(page, "To", YEAR_2009[1])
    summary = page.locator(f".st-key-{KEY_DATE_SUMMARY}")
    wait_text(page, summary, contains=("dated 2009-01-01 to 2009-12-31", "--date 2009-01-01/2009-12-31"))

    search_text(page, QUERY)
    hits = text_hits(db, date=YEAR_2009)
    wait_captions(page, KEY_TEXT_RESULTS, hits)
    assert hits[tiles.URI].str.endswith(H.NAIP_2009).all()
    assert set(hits[tiles.ID]) != set(text_hits(db)[tiles.ID])  # the range left tiles out
    map_frame(page, len(hits))
    page.screenshot(path=str(tmp_path / "date_range.png"))
    exported = geojson_rows(download(page, VIEW_TEXT, "tiles", "geojson"))
    assert [f["properties"][tiles.ID] for f in exported] == list(hits[tiles.ID])
    assert all(f["properties"][tiles.DATETIME].startswith("2009-08-18") for f in exported)

    page.locator(f".st-key-{KEY_TEXT_RESULTS}-hit-1").get_by_role("button", name="Similar tiles").click()
    page.get_by_text("Tiles similar to").wait_for(timeout=UI_TIMEOUT_MS)
    wait_captions(page, KEY_IMAGE_RESULTS, similar_tiles(db, hits[tiles.ID].iloc[0], DEFAULT_K, date=YEAR_2009))

    page.get_by_role("tab", name=VIEW_TEXT).click()
    label_set_named(page, LABEL)
    results = f".st-key-{KEY_TEXT_RESULTS}"
    for rank, sign, done in ((1, "+", "1 positive, 0 negative"), (2, "\u2212", "1 positive, 1 negative")):
        press(page, f"{results}-hit-{rank}", sign)
        counts(page, done)
    page.get_by_role("tab", name=VIEW_LABELS).click()
    page.get_by_role("button", name="Find more like these").click()
    ids = list(hits[tiles.ID])
    wait_captions(page, KEY_LABEL_RESULTS, query(db, positive=[ids[0]], negative=[ids[1]], k=DEFAULT_K,
                                                 date=YEAR_2009))

    page.get_by_role("tab", name=VIEW_DETECT).click()
    page.locator(f".st-key-{KEY_DETECT_THRESHOLD} input[type=range]").focus()
    page.keyboard.press("Home")  # threshold 0: every detection of the dates
    found = review_detections(db, LABEL, min_score=0.0, date=YEAR_2009)
    assert 0 < len(found) < len(frame)
    wait_captions(page, KEY_DETECT_RESULTS, found.head(DEFAULT_K))
    assert [f["properties"][tiles.ID] for f in geojson_rows(download(page, VIEW_DETECT, "detections", "geojson"))] \
        == list(found[tiles.ID])

    # A start after the end is one line on the view, and nothing is searched.
    page.get_by_role("tab", name=VIEW_TEXT).click()
    type_date(page, "To", "2008-12-31")
    page.get_by_text("Dates: the start date 2009-01-01 is after the end date 2008-12-31").wait_for(
        timeout=UI_TIMEOUT_MS)
    page.locator(f".st-key-{KEY_TEXT_RESULTS}").wait_for(state="detached", timeout=UI_TIMEOUT_MS)
    assert page.locator(f".st-key-{KEY_TEXT}").count() == 0  # the view stops at the message
    type_date(page, "To", "")
    wait_captions(page, KEY_TEXT_RESULTS, text_hits(db, date=(YEAR_2009[0], None)))
    assert_no_traceback(page)


def test_a_clicked_tile_shows_its_timeline(time_server, time_db, page, tmp_path):
    db = time_db["db"]
    open_app(page, time_server.url)
    search_text(page, QUERY)
    hits = text_hits(db)
    frame = map_frame(page, len(hits))
    wait_captions(page, KEY_TEXT_RESULTS, hits)
    naip = hits[hits[tiles.URI].str.contains("m_4709963")]
    tile = naip[tiles.ID].iloc[0]
    click_map_tile(page, frame, tile)
    line = rsclip.timeline(db, tile)
    assert len(line) >= 2 and set(line[tiles.URI].map(lambda u: u.rsplit("/", 1)[-1])) == {H.NAIP_2009, H.NAIP_2020}
    assert line[tiles.DATETIME].is_monotonic_increasing
    assert_timeline(page, VIEW_TEXT, line)
    panel = page.locator(f".st-key-{view_key('tile_panel', VIEW_TEXT)}")
    page.locator(f".st-key-{view_key('timeline', VIEW_TEXT)}").screenshot(path=str(tmp_path / "timeline.png"))

    # Similarities to another date: the chooser takes any tile of the place.
    other = line.iloc[-1]
    page.get_by_role("combobox", name="Similarity to").click()
    page.get_by_role("option", name=f"{timedata.describe_time(other[tiles.DATETIME])} · "
                                    f"{other[tiles.URI].rsplit('/', 1)[-1]}").click()
    assert_timeline(page, VIEW_TEXT, rsclip.timeline(db, tile, reference=other[tiles.ID]))

    # "Open" shows that date's tile in the panel, with its own buttons.
    page.locator(f".st-key-{view_key('timeline', VIEW_TEXT, 'entry', len(line))}").get_by_role(
        "button", name="Open").click()
    wait_text(page, panel, contains=("Showing another date of this place", other[tiles.URI],
                                     timedata.describe_time(other[tiles.DATETIME])))

    # A card's "Timeline" opens its tile's panel and timeline.
    second = naip[tiles.ID].iloc[1]
    rank = list(hits[tiles.ID]).index(second) + 1
    page.locator(f".st-key-{KEY_TEXT_RESULTS}-hit-{rank}").get_by_role("button", name="Timeline").click()
    assert_timeline(page, VIEW_TEXT, rsclip.timeline(db, second))
    row = hits.set_index(tiles.ID).loc[second]
    wait_text(page, panel, contains=(row[tiles.URI], f"x={row[tiles.X]} y={row[tiles.Y]}"),
              lacks=("Showing another date",))
    assert_no_traceback(page)


def test_the_changes_view_maps_what_moved_between_two_dates(time_server, time_db, page, tmp_path):
    db = time_db["db"]
    open_app(page, time_server.url)
    page.get_by_role("tab", name=VIEW_CHANGES).click()
    for label, year in (("Date A (before)", "2009"), ("Date B (after)", "2020")):
        box = page.get_by_role("textbox", name=label, exact=True)
        enter_text(page, box, year)
    moved = rsclip.changes(db, "2009", "2020", k=DEFAULT_K)
    assert len(moved) == DEFAULT_K and moved["change"].is_monotonic_decreasing
    wait_captions(page, KEY_CHANGES_RESULTS, moved)
    map_frame(page, len(moved))
    card = page.locator(f".st-key-{KEY_CHANGES_RESULTS}-hit-1").inner_text()
    assert f"change {moved['change'].iloc[0]:.3f}" in card and "2009-08-18 \u2192 2020-08-31" in card
    page.screenshot(path=str(tmp_path / "changes.png"))
    exported = geojson_rows(download(page, VIEW_CHANGES, "changes", "geojson"))
    assert [f["properties"][tiles.ID] for f in exported] == list(moved[tiles.ID])
    np.testing.assert_allclose([f["properties"]["score"] for f in exported], moved["change"], atol=1e-5)
    assert_no_traceback(page)


# ------------------------------------------------------------------------------------------ without a browser


def run_page(monkeypatch, db: str):
    """The page script run in-process (Streamlit's AppTest: the real script runner, no browser)."""
    from streamlit.testing.v1 import AppTest

    from rsclip.app.server import APP_SCRIPT

    monkeypatch.setattr("sys.argv", [str(APP_SCRIPT), "--db", db])
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=UI_TIMEOUT_MS / 1000)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def shown(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def test_bad_dates_are_one_line_and_nothing_is_searched(time_db, monkeypatch):
    app = run_page(monkeypatch, time_db["db"])
    app.text_input(key=KEY_TEXT).input(QUERY).run()
    assert not app.error and [c for c in app.caption if "tile(s), best first" in c.value]
    for start, end, message in (
        ("2009-13-01", "", "Dates: the start date '2009-13-01' is not a date of the calendar"),
        ("yesterday", "", "Dates: the start date 'yesterday' is not a date: type YYYY-MM-DD (or YYYY-MM, YYYY)"),
        ("2021", "2020-06", "Dates: the start date 2021 is after the end date 2020-06"),
        ("", "2009/2010", "Dates: the end date '2009/2010' is not a date"),
    ):
        app.text_input(key=KEY_DATE_START).set_value(start)
        app.text_input(key=KEY_DATE_END).set_value(end).run()
        assert not app.exception, [e.value for e in app.exception]
        errors = [shown(e.value) for e in app.error]
        assert len(errors) == 1 and errors[0].startswith(message), errors  # on the open view
        assert not [c for c in app.caption if "tile(s), best first" in c.value]  # nothing searched
    # Longer text is cut to ten characters by the field itself (checked_day refuses it if it ever comes).
    app.text_input(key=KEY_DATE_START).set_value("2009-01-01' OR 1=1")
    app.text_input(key=KEY_DATE_END).set_value("").run()
    assert app.text_input(key=KEY_DATE_START).value == "2009-01-01" and not app.error
    app.text_input(key=KEY_DATE_START).set_value("2020")
    app.text_input(key=KEY_DATE_END).set_value("").run()
    assert not app.error
    wanted = text_hits(time_db["db"], date=("2020", None))
    assert wanted[tiles.URI].str.endswith(H.NAIP_2020).all()
    assert [c for c in app.caption if f"{len(wanted)} tile(s), best first" in c.value]


def test_a_table_without_dates_hides_the_date_range_and_says_so(time_db, tmp_path, monkeypatch):
    """A table written before rsclip recorded time (no time columns): no date fields and no limits, a note
    instead; searches work; the timeline says the table has no dates; nothing fails."""
    frame = time_db["frame"]
    current = tiles.open_table(time_db["db"]).schema
    old_fields = [f for f in current if f.name not in tiles.TIME_COLUMNS]
    old_schema = pa.schema(old_fields, metadata=current.metadata)
    old = tiles.connect(tmp_path / "old").create_table("tiles", schema=old_schema)
    old.add(pa.Table.from_pandas(frame[[f.name for f in old_fields]], schema=old_schema, preserve_index=False))
    app = run_page(monkeypatch, str(tmp_path / "old"))
    assert any(NO_COLUMNS[:40] in shown(c.value) for c in app.sidebar.caption)
    assert not [t for t in app.text_input if t.key in (KEY_DATE_START, KEY_DATE_END)]
    assert not [s for s in app.slider if s.key in (KEY_MAX_CLOUD, KEY_MAX_NODATA)]
    app.text_input(key=KEY_TEXT).input(QUERY).run()
    hits = query_text(str(tmp_path / "old"), QUERY, DEFAULT_K)
    app.session_state[view_key(STATE_SELECTED, VIEW_TEXT)] = hits[tiles.ID].iloc[0]
    app.run()
    assert not app.exception and not app.error
    assert NO_DATES in [c.value for c in app.caption]
    assert not [b for b in app.button if b.label == "Timeline"]  # no card offers one


def test_typed_dates_are_parsed_strictly():
    assert timedata.checked_day("  2020-08-31 ", "d") == "2020-08-31" and timedata.checked_day(" ", "d") is None
    for bad, error in (("2020-8-31", InvalidInput), ("20200831", InvalidInput), ("2020-02-30", InvalidInput),
                       ("0000", InvalidInput), ("2020-08-31T00:00", LimitExceeded), ("'; DROP", InvalidInput),
                       ("2020-08-31\n", None)):
        if error is None:
            assert timedata.checked_day(bad, "d") == "2020-08-31"
            continue
        with pytest.raises(error):
            timedata.checked_day(bad, "d")
    span = timedata.date_range("2009", "2009-08")
    assert span == dates.DateRange(dates.to_micros(dt.datetime(2009, 1, 1, tzinfo=UTC)),
                                   dates.to_micros(dt.datetime(2009, 9, 1, tzinfo=UTC)))
    assert timedata.date_range("2020-08-31", "2020-08-31").stop - timedata.date_range("2020-08-31", "").start \
        == 86_400_000_000  # one day, its end included
    assert timedata.date_range("", "") is None and timedata.date_range("", "2020").start is None
    with pytest.raises(InvalidInput, match="after the end"):
        timedata.date_range("2020-09-01", "2020-08-31")
    chosen = timedata.time_filter("2009", "", 100, 25)
    assert (chosen.max_cloud, chosen.max_nodata) == (None, 0.25) and chosen.date.stop is None
    assert chosen.describe() == "dated from 2009 · nodata at most 25 %"
    assert chosen.cli() == "--date 2009/.. --max-nodata 0.25"
    assert timedata.time_filter(None, None, 100, 100) == timedata.TimeFilter()
    assert timedata.TimeFilter().describe() is None and timedata.TimeFilter().cli() is None


def test_dates_are_shown_as_text():
    assert timedata.describe_time(pd.Timestamp("2020-08-31", tz="UTC")) == "2020-08-31"
    assert timedata.describe_time(pd.Timestamp("2020-08-31T17:05:09+02:00")) == "2020-08-31 15:05 UTC"
    assert timedata.describe_time(pd.NaT) == "date unknown" and timedata.describe_time(None) == "date unknown"
    row = {tiles.DATETIME: pd.Timestamp("2009-08-18", tz="UTC"), timedata.DATETIME_B: pd.NaT,
           tiles.CLOUD_COVER: np.nan, tiles.NODATA_FRACTION: 0.125}
    assert timedata.seen_text(row) == "2009-08-18 \u2192 date unknown · nodata 12 %"
    assert timedata.seen_text({tiles.CLOUD_COVER: 5.0}) == "cloud 5 %" and timedata.seen_text({}) is None


def test_the_table_times_are_counted(time_db):
    times = timedata.table_times(tiles.open_table(time_db["db"]))
    frame = time_db["frame"]
    assert times.columns == frozenset(tiles.TIME_COLUMNS)
    assert times.dated == frame[tiles.DATETIME].notna().sum() < len(frame)  # the Landsat tiles are undated
    assert (times.first, times.last) == (dt.datetime(2009, 8, 18, tzinfo=UTC), dt.datetime(2020, 8, 31, tzinfo=UTC))
    assert times.clouded == 0 and times.measured == len(frame)
