"""Issue 13, items 2, 3, 5 and 12 below the browser: typed text is text, reads are bounded, limits name
themselves, displayed values render as plain text, and self-exclusion stays bounded.

The same in the running app (Chromium): tests/browser/test_webapp.py.
"""

from __future__ import annotations

import errno
import io
import os
import re
import string
import subprocess
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from rsclip.app import server
from rsclip.app.cli import main
from rsclip.app.web import text as web_text
from rsclip.app.web.data import uploads
from rsclip.app.web.data.finder import MAX_PATCH_THUMBNAILS, OVERLAY_MAX_SIDE, THUMBNAIL_SIDE, find_feature
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.errors import InvalidInput, LimitExceeded, NotFound, UnsafeInput
from rsclip.search import query as query_module
from rsclip.search.locate import MAX_PATCHES
from rsclip.search.encoding import MAX_TEXT_CHARS, Text, text_vector
from rsclip.search.query import query, query_text
from rsclip.search.searchers import MAX_K
from tests.helpers import write_scene_table

# What a web visitor may type that names something readable: each must be encoded as text.
TYPED = ["file:///dev/zero", "file:///root/.aws/credentials", "s3://some-bucket/k.jpg", "/etc/passwd",
         "../../x.png", "file:///proc/self/environ"]


@pytest.fixture(scope="module")
def small_db(tiny_model, rsicd_files, tmp_path_factory):
    db = tmp_path_factory.mktemp("limits") / "db"
    write_scene_table(db, tiny_model, rsicd_files[::300][:6])
    return db


def png_bytes(width: int, height: int) -> bytes:
    """A black RGB PNG of ``width`` x ``height`` written row by row (never held decoded): ~300 KB at 9,400^2."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    row = b"\x00" * (1 + 3 * width)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------ item 2


@pytest.mark.parametrize("text", TYPED)
def test_typed_text_is_encoded_as_text(small_db, tiny_model, text):
    hits = query_text(small_db, text, 3)
    want = query(small_db, text_vector(text, str(tiny_model)), 3)
    assert hits["id"].tolist() == want["id"].tolist()
    np.testing.assert_allclose(hits["score"], want["score"], rtol=1e-6)
    assert query(small_db, Text(text), 3)["id"].tolist() == want["id"].tolist()


def test_a_typed_path_to_a_readable_image_is_still_text(small_db, tiny_model, rsicd_files):
    path = str(rsicd_files[0])
    as_text = query_text(small_db, path, 3)
    assert as_text["id"].tolist() == query(small_db, text_vector(path, str(tiny_model)), 3)["id"].tolist()
    as_image = query(small_db, path, 3, exclude_self=False)  # the Python API keeps path queries
    assert as_image["id"].iloc[0] == tiles.tile_id(path, 0, 0, 150, 150)


def _never_blocks(call):
    """Run ``call`` in a thread; a read of a FIFO would block in open() forever."""
    box = {}

    def run():
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the call blocked: something opened the FIFO"
    return box.get("exc")


def test_read_bytes_refuses_what_is_not_a_regular_file(tmp_path, small_db):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    for uri in ("/dev/zero", f"file://{fifo}", str(tmp_path / "folder.jpg"), str(tmp_path / "zero.jpg")):
        exc = _never_blocks(lambda: storage.read_bytes(uri))
        assert isinstance(exc, UnsafeInput) and "not a regular file" in str(exc), exc
    exc = _never_blocks(lambda: query(small_db, f"file://{fifo}", 3))
    assert isinstance(exc, UnsafeInput) and str(fifo) in str(exc)
    with pytest.raises(OSError) as info:  # nobody holds the FIFO open for reading
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert info.value.errno == errno.ENXIO
    with pytest.raises(NotFound):
        storage.read_bytes(tmp_path / "missing.jpg")


def test_read_bytes_refuses_more_than_its_limit(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1001)
    assert len(storage.read_bytes(path, max_bytes=1001)) == 1001
    with pytest.raises(LimitExceeded, match="limit of 1,000"):
        storage.read_bytes(path, max_bytes=1000)
    # /proc files say size 0: the read itself is bounded
    with pytest.raises(LimitExceeded, match="limit of 10 bytes"):
        storage.read_bytes("/proc/self/status", max_bytes=10)


def test_read_bytes_refuses_large_objects(s3, s3_prefix):
    uri = f"{s3_prefix}/big.jpg"
    storage.write_bytes(uri, b"y" * 5000)
    assert len(storage.read_bytes(uri, max_bytes=5000)) == 5000
    with pytest.raises(LimitExceeded, match=r"big\.jpg is 5,000 bytes"):
        storage.read_bytes(uri, max_bytes=4999)
    with pytest.raises(NotFound):
        storage.read_bytes(f"{s3_prefix}/missing.jpg")


@pytest.mark.parametrize("path", ["/tmp/" + "a" * 300 + ".jpg", "/tmp/" + "b/" * 2100 + "c.jpg", "/tmp/x\0.jpg"])
def test_unusable_paths_are_one_error(path):
    with pytest.raises(InvalidInput, match="not a usable path"):
        storage.read_bytes(path)


# ------------------------------------------------------------------------------------------ item 3


def test_a_small_png_of_huge_dimensions_is_refused_before_decoding(tmp_path):
    data = png_bytes(9400, 9400)
    assert len(data) < 1_000_000
    (tmp_path / "bomb.png").write_bytes(data)
    # A fresh process, so its peak memory is this decode's: refusing reads the header only (a decode would
    # hold 9,400^2 x 3 = 265 MB).
    probe = (
        "import resource, sys\n"
        "from rsclip.app.web.data.uploads import decode_upload\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    decode_upload(data, 'bomb.png')\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "bomb.png")], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    message, grown_mb = done.stdout.strip().splitlines()
    assert message.startswith("LimitExceeded bomb.png: 9400x9400 pixels exceeds the decode limit of "
                              f"{uploads.MAX_UPLOAD_PIXELS}"), done.stdout + done.stderr
    assert int(grown_mb) < 50


def test_upload_limits_name_themselves():
    with pytest.raises(LimitExceeded, match=f"upload limit of {uploads.MAX_UPLOAD_MB} MB"):
        uploads.decode_upload(b"\0" * (uploads.MAX_UPLOAD_BYTES + 1), "huge.png")
    command = server.streamlit_command(server.WebConfig(db="db"), "127.0.0.1", 8501)
    assert f"--server.maxUploadSize={uploads.MAX_UPLOAD_MB}" in command  # the same constant


def test_patch_count_text_length_and_k_are_bounded(tiny_model, small_db):
    grid = io.BytesIO()
    Image.fromarray(np.zeros((1200, 1200, 3), dtype=np.uint8)).save(grid, format="PNG")
    with pytest.raises(LimitExceeded, match=f"exceed the limit of {MAX_PATCHES}"):
        find_feature(grid.getvalue(), "wide.png", "tanks", model=str(tiny_model), tile=16)
    long = "x" * (MAX_TEXT_CHARS + 1)
    with pytest.raises(LimitExceeded, match=f"more than the limit of {MAX_TEXT_CHARS:,}"):
        find_feature(grid.getvalue(), "wide.png", long, model=str(tiny_model), grid=(2, 2))
    with pytest.raises(LimitExceeded, match="characters long"):
        query_text(small_db, long, 3)
    for k in (0, MAX_K + 1, 2.5, True):
        with pytest.raises(InvalidInput, match="k must be"):
            query_text(small_db, "x", k)
    with pytest.raises(LimitExceeded, match=f"limit of {web_text.MAX_BBOX_CHARS}"):
        web_text.parse_bbox("1, " * web_text.MAX_BBOX_CHARS)


def test_a_feature_match_is_small_whatever_the_upload(tiny_model):
    """What the page caches per upload: patches, an overlay at display size and <= 48 small thumbnails."""
    rows, cols = np.indices((3000, 4000))
    image = np.stack([rows % 256, cols % 256, (rows + cols) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) <= uploads.MAX_UPLOAD_BYTES
    match = find_feature(data, "scene.png", "storage tanks", model=str(tiny_model), grid=(10, 10))
    assert len(match.patches) == 100 and len(match.thumbnails) == MAX_PATCH_THUMBNAILS
    assert all(max(t.shape[:2]) <= THUMBNAIL_SIDE for t in match.thumbnails.values())
    with Image.open(io.BytesIO(match.overlay_png)) as overlay:
        assert max(overlay.size) == OVERLAY_MAX_SIDE
    held = sum(t.nbytes for t in match.thumbnails.values()) + len(match.overlay_png)
    held += int(match.patches.memory_usage(deep=True).sum())
    assert held < 8 * 1024 * 1024, held


def test_locate_out_on_a_big_raster_reads_decimated(tiny_model, tmp_path, capsys):
    """`rsclip locate big.tif --grid 2 2 --out`: patches and the heatmap come from decimated reads."""
    path, side = tmp_path / "big.tif", 20_000
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", SPARSE_OK="TRUE")
    with rasterio.open(path, "w", **profile) as dst:  # sparse: unwritten blocks read as zeros
        dst.write(np.full((3, 512, 512), 200, dtype=np.uint8), window=rasterio.windows.Window(0, 0, 512, 512))
    assert path.stat().st_size < 5_000_000
    out = tmp_path / "heat.png"
    tracemalloc.start()
    try:
        code = main(["locate", str(path), "bright corner", "--model", str(tiny_model), "--grid", "2", "2",
                     "--out", str(out)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    assert "4 patches" in capsys.readouterr().out
    with Image.open(out) as png:
        assert max(png.size) == 2048
    # a full-resolution read of one patch alone is 10,000^2 x 3 bytes (300 MB), its mask as much again
    assert peak < 120 * 1024 * 1024, peak


# ------------------------------------------------------------------------------------------ item 5


@pytest.mark.parametrize("value", [
    "![x](https://host.invalid/p.png).jpg", '<img src="https://host.invalid/q.png">.jpg',
    "[link](https://host.invalid)", ":red[colour] :material/home: $x^2$", "**bold** _it_ `code` ~~s~~",
    "# heading\n- item\n> quote", "<https://host.invalid>", "a\\b & &lt; www.host.invalid",
])
def test_escape_markdown_leaves_no_syntax(value):
    escaped = web_text.escape_markdown(value)
    assert "\n" not in escaped
    assert re.sub(r"\\(.)", r"\1", escaped) == " ".join(value.splitlines())  # shown exactly as it was
    bare = re.sub(r"\\.", "", escaped)  # what is left once every escaped character is taken out
    assert not set(bare) & set(string.punctuation), bare


def test_server_flags_keep_xsrf_cors_upload_cap_and_hosts():
    local = server.streamlit_command(server.WebConfig(db="db"), "127.0.0.1", 8501, ("team.example.org",))
    for flag in ("--server.enableXsrfProtection=true", "--server.enableCORS=true", "--server.enableAgentApi=false",
                 f"--server.maxUploadSize={uploads.MAX_UPLOAD_MB}", f"--server.maxMessageSize={server.MAX_MESSAGE_MB}",
                 "--server.address=127.0.0.1", "--server.allowedHosts=localhost",
                 "--server.allowedHosts=team.example.org", "--client.showErrorDetails=none"):
        assert flag in local
    exposed = server.streamlit_command(server.WebConfig(db="db"), "0.0.0.0", 8501)
    assert "--server.address=0.0.0.0" in exposed and not any("allowedHosts" in f for f in exposed)
    assert not any("corsAllowedOrigins" in f or "enableCORS=false" in f for f in local + exposed)


# ------------------------------------------------------------------------------------------ item 12


class CountingSearcher:
    """A real searcher that counts the rows it hands out (how far a search widened its fetch)."""

    def __init__(self, inner):
        self.inner, self.table, self.fetched = inner, inner.table, []
        self.dataset, self.path, self.note = inner.dataset, inner.path, inner.note

    def row_count(self) -> int:
        return self.inner.row_count()

    def ranker(self, vector, filters, *, exact=False):
        rank = self.inner.ranker(vector, filters, exact=exact)

        def counted(n):
            frame = rank(n)
            self.fetched.append(len(frame))
            return frame
        return counted


@pytest.mark.parametrize("resident", [False, True])
def test_self_exclusion_keeps_identical_tiles_and_fetches_little(tiny_model, tmp_path, monkeypatch, resident):
    """400 identical all-nodata (black) tiles: an image query of one of them returns k rows of the others,
    from one fetch of k + a few rows, with or without the query's own tile in the table."""
    black = tmp_path / "ocean"
    black.mkdir()
    files = []
    for i in range(400):
        files.append(black / f"ocean_{i:03d}.png")
        Image.fromarray(np.zeros((150, 150, 3), dtype=np.uint8)).save(files[-1])
    db = tmp_path / "db"
    write_scene_table(db, tiny_model, files)
    searchers = []
    real = query_module.searcher_for

    def counting(table, *, resident=False):
        searchers.append(CountingSearcher(real(table, resident=resident)))
        return searchers[-1]
    monkeypatch.setattr(query_module, "searcher_for", counting)
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((150, 150, 3), dtype=np.uint8)).save(outside)
    for image, own in ((files[7], tiles.tile_id(str(files[7]), 0, 0, 150, 150)), (outside, None)):
        hits = query(db, str(image), 10, resident=resident)
        assert len(hits) == 10 and (hits["score"] > 0.9999).all()
        assert own not in set(hits["id"]) and len(set(hits["id"])) == 10
        assert sum(searchers[-1].fetched) <= 10 + 8, searchers[-1].fetched
    assert len(query(db, str(outside), 100, resident=resident)) == 100  # the other identical tiles stay

