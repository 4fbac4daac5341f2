"""Driving the web app in headless Chromium: the browser (Debian's chromium, installed when missing), pages
that record every request they make, and the steps and waits the browser tests share
(tests/browser/test_webapp.py, tests/browser/test_map.py, tests/browser/test_time.py; the ``browser`` fixture is in
conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from rsclip.app.web.keys import KEY_LABEL_COUNTS, view_key
from rsclip.app.web.views.maps import COMPONENT_NAME
from infra.local_stack import free_port
from rsclip.app.server import serve
from rsclip.app.web.text import describe_window, source_name
from rsclip.table import tiles

CHROMIUM = Path("/usr/bin/chromium")


CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


UI_TIMEOUT_MS = 180_000  # generous: a loaded CI machine imports torch slowly on the first page load
POLL_MS = 250


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (CI starts from a fresh machine)."""
    if CHROMIUM.exists():
        return CHROMIUM
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and not shutil.which("sudo"):
        pytest.fail("chromium is missing and apt-get needs root: install it with `apt-get install chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run([*prefix, *cmd], env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    assert CHROMIUM.exists(), "apt-get installed chromium but /usr/bin/chromium is missing"
    return CHROMIUM


def wait_images_loaded(pg, selector: str, count: int) -> None:
    """Wait until ``selector`` holds ``count`` images, all decoded (naturalWidth > 0)."""
    pg.wait_for_function(
        """([sel, n]) => {
            const imgs = Array.from(document.querySelectorAll(sel + ' img'));
            return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=[selector, count],
        timeout=UI_TIMEOUT_MS,
    )


APP_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def wait_idle(pg, start_ms: int = 1_500) -> None:
    """Wait until no script run is in progress: one the last action started (given ``start_ms`` to begin;
    Streamlit marks its root with ``data-test-script-state``) and one still going from before. Typing into a
    widget that a running script is about to redraw can lose the typed text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if start_ms:
        try:
            pg.wait_for_function("s => !document.querySelector(s)", arg=APP_IDLE, timeout=start_ms, polling=50)
        except PlaywrightTimeout:
            pass  # no run started within start_ms, or it ended between two polls
    pg.locator(APP_IDLE).wait_for(state="attached", timeout=UI_TIMEOUT_MS)


def poll(pg, read, done):
    """``read()`` again every :data:`POLL_MS` until ``done`` holds for what it returned or
    :data:`UI_TIMEOUT_MS` have passed; returns the last value read (the caller asserts on it).

    ``read`` reads the page as it is now, without waiting, and returns None for what is not drawn yet (an
    element missing, or drawn without its text, between two runs' drawings): "not yet", never an error, so
    a loaded machine that draws slowly only makes the poll take longer (see :func:`text_of`)."""
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    value = read()
    while not done(value) and time.monotonic() < deadline:
        pg.wait_for_timeout(POLL_MS)
        value = read()
    return value


def text_of(locator) -> str | None:
    """The text of the one element ``locator`` finds now; None while there is none (not drawn yet, or detached
    by a redraw) or more than one. Reads all matches in one step (``all_inner_texts`` neither waits nor fails
    on an element that goes away), so it is safe in a :func:`poll`."""
    texts = locator.all_inner_texts()
    return texts[0] if len(texts) == 1 else None


def wait_text(pg, locator, contains=(), lacks=()) -> str:
    """The text of ``locator`` once the app is idle and the text holds every string of ``contains`` and none of
    ``lacks``. A run redraws a container element by element, so one new element (the one a test waited for)
    can stand beside stale ones until the run ends."""
    def text() -> str | None:
        wait_idle(pg, start_ms=0)
        return text_of(locator)

    shown = poll(pg, text, lambda t: _holds(t, contains, lacks))
    assert _holds(shown, contains, lacks), \
        f"wanted {list(contains)}, not {list(lacks)}; shown:\n{(shown or '(nothing)')[-3000:]}"
    return shown


def _holds(text: str | None, contains, lacks) -> bool:
    return text is not None and all(s in text for s in contains) and not any(s in text for s in lacks)


def hit_captions(pg, results_key: str) -> list[str] | None:
    """``name · window`` of every hit card under ``results_key``, in rank order; None while a card is drawn
    without its caption yet (read in one step: see :func:`text_of`)."""
    texts = pg.locator(f"[class*='st-key-{results_key}-hit-']").all_inner_texts()
    found = [re.search(r"(\S+ · x=\d+ y=\d+ \d+x\d+ px)", t) for t in texts]
    return None if None in found else [m.group(1) for m in found]


def expected_captions(hits) -> list[str]:
    return [f"{source_name(r[tiles.URI])} · {describe_window(r)}" for r in hits.to_dict("records")]


def open_app(pg, url: str) -> None:
    pg.goto(url)
    pg.get_by_label("Describe what to find").wait_for(timeout=UI_TIMEOUT_MS)


def enter_text(pg, box, text: str) -> None:
    """Type ``text`` into the text input ``box`` and press Enter, once no run can redraw the box under the
    typing, then wait for the run that the entry starts."""
    wait_idle(pg, start_ms=0)
    box.fill(text)
    box.press("Enter")
    wait_idle(pg)


def search_text(pg, text: str) -> None:
    enter_text(pg, pg.get_by_label("Describe what to find"), text)


def assert_no_traceback(pg) -> None:
    body = pg.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body, body[-2000:]


MAP_FRAME = f"iframe[title*='{COMPONENT_NAME}']"


def recorded_page(browser):  # noqa: F811 - the fixture imported above
    """A fresh page and the list of every URL it (and its frames) requested."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    requests: list[str] = []
    pg.on("request", lambda request: requests.append(request.url))
    return pg, requests


def assert_only(requests: list[str], origins: set[str]) -> None:
    """Every request went to one of ``origins`` (scheme://host:port); data: and blob: URLs are the page's own."""
    seen = {re.sub(r"^([a-z]+://[^/]+).*$", r"\1", u) for u in requests if not u.startswith(("data:", "blob:"))}
    assert requests and seen <= origins, f"the page reached beyond {origins}: {sorted(seen - origins)}"


@contextmanager
def served(db: str):
    """``rsclip serve`` of ``db`` on a free port of 127.0.0.1 (AWS variables through the environment), stopped
    afterwards."""
    web = serve(db, port=free_port(), block=False)
    try:
        yield web
    finally:
        web.stop()


@contextmanager
def app_page(browser, server):
    """A fresh page; afterwards, every request it made must have gone to ``server``'s own origin."""
    pg, requests = recorded_page(browser)
    try:
        yield pg
    finally:
        pg.context.close()
    assert_only(requests, {server.url.rstrip("/")})


def server_and_page(db_fixture: str, name: str):
    """The two fixtures of a browser test module: ``name``, the module's ``rsclip serve`` of the table that the
    fixture ``db_fixture`` (a dict with ``"db"``) built, and ``page``, a fresh page each test whose requests must
    all go to that server's origin. Use: ``map_server, page = server_and_page("geo_db", "map_server")``."""

    @pytest.fixture(scope="module", name=name)
    def server_fixture(request):
        with served(request.getfixturevalue(db_fixture)["db"]) as web:
            yield web

    @pytest.fixture(name="page")
    def page_fixture(browser, request):
        with app_page(browser, request.getfixturevalue(name)) as pg:
            yield pg

    return server_fixture, page_fixture


def map_frame(pg, count: int | None = None):
    """The visible map's frame, once Leaflet is up (and, with ``count``, draws that many footprints). A run
    can replace the map's iframe while this waits: the frame is then taken again (a detached frame, or one
    not loaded yet, is "not yet")."""
    from playwright.sync_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while True:
        wait_idle(pg, start_ms=0)  # a run in progress may still show the map it is about to replace
        left_ms = max(1_000, (deadline - time.monotonic()) * 1000)
        try:
            handle = pg.locator(MAP_FRAME).first.element_handle(timeout=left_ms)
            frame = handle.content_frame()
            if frame is not None:
                frame.wait_for_function("() => window.rsclipMap !== undefined", timeout=left_ms)
                if count is not None:
                    frame.wait_for_function("n => window.rsclipMap.byId.size === n", arg=count, timeout=left_ms)
                return frame
        except PlaywrightTimeout:
            raise
        except PlaywrightError:  # the iframe was detached or reloaded under us
            pass
        assert time.monotonic() < deadline, f"the map's frame did not load within {UI_TIMEOUT_MS} ms"
        pg.wait_for_timeout(POLL_MS)


def wait_captions(pg, results_key: str, hits: pd.DataFrame) -> None:
    """Wait until the cards under ``results_key`` are ``hits``, in order, their previews loaded (the page
    shows the previous run's cards until the new run replaces them)."""
    want = expected_captions(hits)
    assert poll(pg, lambda: hit_captions(pg, results_key), lambda got: got == want) == want
    wait_images_loaded(pg, f".st-key-{results_key}", len(hits))


def click_map_tile(pg, frame, tile_id: str) -> None:
    """Hover over a tile's footprint and click it, zoomed to it and brought above its overlapping neighbours."""
    frame.evaluate("id => { const g = rsclipMap.byId.get(id); rsclipMap.map.fitBounds(g.getBounds(), {animate: false});"
                   " g.bringToFront(); }", tile_id)
    path = frame.locator(f"path.rsclip-tile[data-tile-id='{tile_id}']")
    path.hover(force=True)
    path.click(force=True)


def label_set_named(pg, name: str) -> None:
    enter_text(pg, pg.get_by_label("Name of a new label set"), name)
    counts(pg, f"{name}: 0 positive, 0 negative")


def counts(pg, text: str) -> None:
    pg.locator(f".st-key-{KEY_LABEL_COUNTS}").get_by_text(text).wait_for(timeout=UI_TIMEOUT_MS)


def press(pg, container: str, name: str) -> None:
    wait_idle(pg, start_ms=0)  # a button that a run is redrawing can swallow the click
    pg.locator(container).get_by_role("button", name=name, exact=True).click()


def download(pg, view: str, what: str, format: str) -> bytes:
    """The bytes of the file a view's download button gives (once no run is redrawing it with stale data)."""
    wait_idle(pg, start_ms=0)
    with pg.expect_download(timeout=UI_TIMEOUT_MS) as info:
        pg.locator(f".st-key-{view_key('downloads', view, what, format)} button").click()
    return open(info.value.path(), "rb").read()


def geojson_rows(data: bytes) -> list[dict]:
    collection = json.loads(data)
    assert collection["type"] == "FeatureCollection"
    return collection["features"]
