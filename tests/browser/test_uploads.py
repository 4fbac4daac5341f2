"""The session's upload caps in the web app (issue 24, item 4), end to end in headless Chromium.

A small real tile table (four RSICD scenes, the tiny CLIP) is served as the user serves it. The browser is made a
client that never deletes what it uploaded (its DELETE requests to the upload endpoint are dropped, as a script
or a crashed tab would), so what the server still holds is the app's doing alone; that is read from the
server's own metrics (``/_stcore/metrics``: the bytes of every upload it keeps). A replaced upload must be
released; past :data:`~rsclip.app.web.data.uploads.MAX_SESSION_UPLOADS` an upload is refused with one line and
released too, and nothing of it is searched.
"""

from __future__ import annotations

import io
import re
import urllib.request

import numpy as np
import pytest
from PIL import Image

from rsclip.app.web.data.uploads import MAX_SESSION_UPLOADS
from rsclip.app.web.keys import KEY_IMAGE_RESULTS, KEY_IMAGE_UPLOAD, VIEW_IMAGE
from tests.helpers import spread_files, write_scene_table
from tests.helpers.browser import (UI_TIMEOUT_MS, assert_no_traceback, open_app, poll, server_and_page,
                                   wait_images_loaded)

UPLOADED = re.compile(r'^cache_memory_bytes\{cache_type="UploadedFileManager",cache=""\} (\d+)$', re.M)


@pytest.fixture(scope="module")
def upload_db(tiny_model, rsicd_files, tmp_path_factory):
    """A local tile table of four whole RSICD scenes."""
    db = tmp_path_factory.mktemp("uploaddb") / "db"
    write_scene_table(db, tiny_model, spread_files(rsicd_files, 4))
    return {"db": str(db)}


upload_server, page = server_and_page("upload_db", "upload_server")


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def held_bytes(server) -> int:
    """The bytes of every upload the server keeps in memory now (its metric is absent when there is none)."""
    with urllib.request.urlopen(f"{server.url}_stcore/metrics", timeout=30) as response:
        found = UPLOADED.search(response.read().decode())
    return int(found.group(1)) if found else 0


def wait_held(pg, server, want: int) -> None:
    """Wait until the server holds ``want`` bytes of uploads (its metric is refreshed every few seconds)."""
    assert poll(pg, lambda: held_bytes(server), lambda got: got == want) == want


def upload(pg, name: str, data: bytes) -> None:
    pg.locator(f".st-key-{KEY_IMAGE_UPLOAD} input[type=file]").set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": data}])


def test_replaced_uploads_are_released_and_a_session_past_its_cap_is_refused(upload_server, page):
    page.route("**/_stcore/upload_file/**",
               lambda route: route.abort() if route.request.method == "DELETE" else route.continue_())
    open_app(page, upload_server.url)
    page.get_by_role("tab", name=VIEW_IMAGE).click()
    assert held_bytes(upload_server) == 0

    sent = {}
    for i in range(MAX_SESSION_UPLOADS):
        side = 8 + i
        name, data = f"up-{i}.png", noise_png(side)
        upload(page, name, data)
        page.get_by_text(f"{name} · {side}x{side} px").wait_for(timeout=UI_TIMEOUT_MS)  # searched with it
        sent[name] = len(data)
        if i == 1:  # the first upload was replaced, and released although the browser never deleted it
            wait_held(page, upload_server, sent[name])
    wait_images_loaded(page, f".st-key-{KEY_IMAGE_RESULTS}", 4)
    wait_held(page, upload_server, sent[name])  # one upload held, however many were sent

    upload(page, "late.png", noise_png(64))
    page.get_by_text(f"late.png: not used: this session has already sent {MAX_SESSION_UPLOADS} uploads").wait_for(
        timeout=UI_TIMEOUT_MS)
    page.locator(f".st-key-{KEY_IMAGE_RESULTS}").wait_for(state="detached", timeout=UI_TIMEOUT_MS)  # nothing searched
    wait_held(page, upload_server, 0)  # the refused upload and the one it replaced are both released
    assert "late.png · 64x64 px" not in page.locator("body").inner_text()
    assert_no_traceback(page)
