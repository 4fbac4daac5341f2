"""What one browser session may upload (rsclip.app.web.data.uploads.UploadLedger) and the page's names for its
table and model (no server path), without a browser: the ledger directly, the sidebar through Streamlit's
AppTest (the real script runner)."""

from __future__ import annotations

import re

import pytest

from rsclip.app.web.data.uploads import (MAX_SESSION_UPLOAD_BYTES, MAX_SESSION_UPLOAD_MB, MAX_SESSION_UPLOADS,
                                         MAX_UPLOAD_BYTES, UploadLedger)
from rsclip.app.web.keys import KEY_FEATURE_UPLOAD, KEY_IMAGE_UPLOAD
from rsclip.app.web.text import model_name

IMAGE, FEATURE = KEY_IMAGE_UPLOAD, KEY_FEATURE_UPLOAD


def test_an_uploader_holds_one_upload_and_releases_the_one_it_replaces():
    ledger = UploadLedger()
    assert ledger.admit(IMAGE, "a", 10, "a.png") == (None, ())
    assert ledger.admit(IMAGE, "a", 10, "a.png") == (None, ())  # a rerun of the same upload: nothing new
    assert ledger.admit(FEATURE, "f", 5, "f.tif") == (None, ())  # another uploader keeps its own
    assert ledger.admit(IMAGE, "b", 20, "b.png") == (None, ("a",))
    assert ledger.admit(IMAGE, None) == (None, ("b",))  # removed by the visitor
    assert ledger.admit(IMAGE, None) == (None, ())
    assert ledger.held == {FEATURE: "f"} and (ledger.count, ledger.total) == (3, 35)


def test_past_the_count_cap_an_upload_is_refused_and_released():
    ledger = UploadLedger()
    for i in range(MAX_SESSION_UPLOADS):
        refusal, _ = ledger.admit(IMAGE if i % 2 else FEATURE, f"id{i}", 1, f"{i}.png")
        assert refusal is None
    held = ledger.held[IMAGE]
    refusal, released = ledger.admit(IMAGE, "late", 1, "late.png")
    assert refusal == (f"late.png: not used: this session has already sent {MAX_SESSION_UPLOADS} uploads, the most "
                       "one session may send; reload the page to start a new session")
    assert released == (held, "late") and IMAGE not in ledger.held  # neither is kept in memory
    assert ledger.admit(IMAGE, "late", 1, "late.png") == (refusal, ("late",))  # shown again: refused again
    assert ledger.admit(IMAGE, None) == (refusal, ())  # the uploader still lists it: the message stays
    assert ledger.admit(FEATURE, "later", 1, "later.png")[0].startswith("later.png: not used: this session has")
    assert ledger.count == MAX_SESSION_UPLOADS


def test_past_the_byte_cap_an_upload_is_refused_and_a_smaller_one_still_fits():
    ledger = UploadLedger()
    n = MAX_SESSION_UPLOAD_BYTES // MAX_UPLOAD_BYTES
    assert n < MAX_SESSION_UPLOADS  # the byte cap is reached first by files at the per-file limit
    for i in range(n):
        assert ledger.admit(IMAGE, f"big{i}", MAX_UPLOAD_BYTES, f"big{i}.tif").refusal is None
    refusal, released = ledger.admit(IMAGE, "one more", MAX_UPLOAD_BYTES, "more.tif")
    assert refusal == (f"more.tif: not used: its {MAX_UPLOAD_BYTES:,} bytes would pass the {MAX_SESSION_UPLOAD_MB} MB "
                       f"one session may upload in all ({n * MAX_UPLOAD_BYTES:,} bytes sent); reload the page to start "
                       "a new session")
    assert released == (f"big{n - 1}", "one more")
    room = MAX_SESSION_UPLOAD_BYTES - ledger.total
    assert ledger.admit(IMAGE, "fits", room, "fits.png") == (None, ())
    assert ledger.admit(IMAGE, None) == (None, ("fits",))  # accepted since: the refusal is not shown again
    assert ledger.admit(FEATURE, "any", 1, "x.png").refusal.startswith("x.png: not used: its 1 bytes")


@pytest.mark.parametrize("model, weights, shown", [
    ("/srv/private/models/tiny-clip", None, "tiny-clip"),
    ("s3://bucket/secret-prefix/clip/", "ab" * 32, "clip · weights abababababab"),
    ("./models/clip.pt", None, "clip.pt"),
    ("openai/clip-vit-base-patch32", None, "openai/clip-vit-base-patch32"),  # a hub id is a name already
])
def test_a_model_is_named_without_its_server_path(model, weights, shown):
    assert model_name(model, weights) == shown


def test_the_sidebar_names_the_table_and_model_but_no_server_path(tiny_model, rsicd_files, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from rsclip.app.server import APP_SCRIPT
    from tests.helpers import spread_files, write_scene_table

    db = tmp_path / "server-only" / "db"
    write_scene_table(db, tiny_model, spread_files(rsicd_files, 4))
    monkeypatch.setattr("sys.argv", [str(APP_SCRIPT), "--db", str(db)])
    app = AppTest.from_file(str(APP_SCRIPT), default_timeout=120)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    shown = " ".join(re.sub(r"\\(.)", r"\1", c.value) for c in app.sidebar.caption)
    assert "table **tiles**" in shown and f"model {tiny_model.name}" in shown
    assert str(tmp_path) not in shown and str(tiny_model.parent) not in shown and "server-only" not in shown
