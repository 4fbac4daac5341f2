"""The ``rsclip`` command line on a small real table: every command, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import rsclip
from rsclip.table import tiles
from rsclip.app.cli import main
from tests.app.cli.common import N_IMAGES, grid_table, run


@pytest.fixture(scope="module")
def cli_db(tiny_model, rsicd_files, tmp_path_factory):
    """40 real scenes embedded with the tiny model, on a 0.5-degree grid around (10 E, 45 N)."""
    db = tmp_path_factory.mktemp("cli") / "db"
    files = grid_table(db, tiny_model, rsicd_files)
    return db, files


def test_query_text_table_and_json(cli_db, capsys):
    db, _ = cli_db
    code, out, err = run(capsys, "query", db, "airport", "-k", 5)
    assert code == 0 and not err
    want = rsclip.query(db, "airport", k=5)
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["id", "uri", "score", "x"] and len(lines) == 6
    assert lines[1].split()[0] == want["id"].iloc[0] and Path(want["uri"].iloc[0]).name in lines[1]
    code, out, _ = run(capsys, "query", db, "airport", "-k", 5, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["id"] for r in rows] == want["id"].tolist()
    assert rows[0]["score"] == pytest.approx(want["score"].iloc[0])


def test_query_image_excludes_itself_unless_asked(cli_db, capsys):
    db, files = cli_db
    own = tiles.tile_id(str(files[4]), 0, 0, 150, 150)
    code, out, _ = run(capsys, "query", db, "--image", files[4], "-k", 3, "--json")
    assert code == 0 and own not in [r["id"] for r in json.loads(out)]
    code, out, _ = run(capsys, "query", db, "--image", files[4], "-k", 3, "--json", "--include-self")
    assert json.loads(out)[0]["id"] == own


def test_query_bbox_and_near(cli_db, capsys):
    db, _ = cli_db
    code, out, _ = run(capsys, "query", db, "beach", "-k", 50, "--bbox", "10", "45", "11", "45.5", "--json")
    rows = json.loads(out)
    want = rsclip.query(db, "beach", k=50, bbox=(10, 45, 11, 45.5))
    assert code == 0 and [r["id"] for r in rows] == want["id"].tolist() and 0 < len(rows) < N_IMAGES
    # comma form, negative-free; near with radius 0 on a shared corner: the four tiles around it
    code, out, _ = run(capsys, "query", db, "beach", "-k", 50, "--near", "10.5,45.5,0", "--json")
    assert code == 0 and len(json.loads(out)) == 4
    code, out, _ = run(capsys, "query", db, "beach", "--near", "10.5", "45.5", "0")
    assert code == 0 and len(out.strip().splitlines()) == 5
    # negative numbers as separate words, and the --opt=comma form
    code, out, _ = run(capsys, "query", db, "beach", "-k", 50, "--bbox", "-180", "-90", "180", "90", "--json")
    assert code == 0 and len(json.loads(out)) == N_IMAGES
    code, out, _ = run(capsys, "query", db, "beach", "-k", 50, "--near=-170,-80,20000", "--json")
    assert code == 0 and len(json.loads(out)) == N_IMAGES


def test_index_and_info(cli_db, capsys, tmp_path):
    db, _ = cli_db
    code, out, _ = run(capsys, "index", db, "--min-rows", 1000)
    assert code == 0 and "btree uri" in out and "exact scan" in out  # id: indexed by the writes
    conn = tiles.connect(db)
    if "tiles_errors" not in tiles.table_names(conn):
        import pyarrow as pa

        conn.create_table("tiles_errors", pa.table({"uri": ["s3://x/broken.tif", "s3://x/empty.jpg"],
                                                    "error": ["not a raster", "empty file"]}))
    code, out, _ = run(capsys, "info", db, "--json")
    info = json.loads(out)
    assert code == 0 and info["rows"] == N_IMAGES and info["dim"] == 32 and info["errors"] == 2
    assert info["model"] == tiles.table_model(tiles.open_table(db))[0]
    assert set(info["index"]["scalar_indexes"]) == {"id", "uri", "lon_min", "lat_min", "lon_max", "lat_max", "datetime"}
    assert info["versions"] >= 2 and "tiles_errors" in info["tables"]
    code, out, _ = run(capsys, "info", db)
    assert code == 0 and "32-d" in out and "errors          2" in out and "none (exact scan)" in out


def test_locate_and_classify(cli_db, tiny_model, capsys, tmp_path):
    _, files = cli_db
    out_png = tmp_path / "heat.png"
    code, out, err = run(capsys, "locate", files[0], "storage tanks", "--model", tiny_model, "--grid", 2, 2,
                         "--out", out_png, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["patches"]) == 4 and sum(p["probability"] for p in result["patches"]) == pytest.approx(1.0)
    assert Image.open(out_png).size == (150, 150)
    code, out, _ = run(capsys, "locate", files[0], "storage tanks", "--model", tiny_model, "--tile", 100)
    assert code == 0 and "4 patches" in out
    code, out, _ = run(capsys, "classify", files[0], files[1], "--labels", "airport", "beach", "forest",
                       "--model", tiny_model, "--json")
    rows = json.loads(out)
    want = rsclip.classify(files[:2], ["airport", "beach", "forest"], model=str(tiny_model))
    assert code == 0 and [r["label"] for r in rows] == want["label"].tolist()
    assert rows[1]["beach"] == pytest.approx(want["beach"].iloc[1])


def test_installed_entry_point_reports_bad_input_in_one_line(cli_db):
    db, _ = cli_db
    exe = Path(sys.executable).parent / "rsclip"
    if not exe.exists():
        pytest.skip("the rsclip script is not installed (pip install -e .)")
    env = {**os.environ, "RUST_LOG": "error"}
    # one launch (a fresh interpreter imports torch: slow on a busy machine); main() is tested in-process
    bad = subprocess.run([str(exe), "query", str(db), "airport", "-k", "0"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("rsclip: error: k must be")
    assert "Traceback" not in bad.stderr


BAD_INPUTS = [
    (["query", "{db}", "airport", "-k", "0"], "k must be"),
    (["query", "{db}", "airport", "--bbox", "1", "2", "3"], "--bbox"),
    (["query", "{db}", "airport", "--bbox", "5", "0", "1", "1"], "inverted"),
    (["query", "{db}", "airport", "--bbox", "a,b,c,d"], "--bbox"),
    (["query", "{db}", "airport", "--near", "10", "95", "5"], "latitude"),
    (["query", "{db}", "airport", "--near", "10", "45", "-5"], "radius"),
    (["query", "{db}", "airport", "--table", "nope"], "unknown table 'nope'"),
    (["query", "{tmp}/no-such-db", "airport"], "no database at"),
    (["query", "{db}"], "give either a text"),
    (["query", "{db}", "airport", "--image", "{img}"], "give either a text"),
    (["query", "{db}", "  "], "empty"),
    (["query", "{db}", "--image", "{tmp}/missing.jpg"], "missing.jpg"),
    (["query", "{db}", "--image", "{tmp}/garbage.jpg"], "garbage.jpg"),
    (["query", "{db}", "airport", "--where", "nosuch > 1"], "nosuch"),
    (["classify", "{img}", "--labels", "airport", "--model", "{model}"], "at least two"),
    (["locate", "{img}", "x", "--model", "{model}", "--grid", "500", "2"], "finer"),
    (["locate", "{img}", "x", "--model", "{model}", "--tile", "100", "--grid", "2", "2"], "either tile or grid"),
    (["locate", "{tmp}/missing.tif", "x", "--model", "{model}"], "missing.tif"),
    (["locate", "{img}", "x", "--model", "{tmp}/no-model"], "model directory not found"),
    (["index", "{db}", "--table", "nope"], "unknown table"),
    (["info", "{tmp}/no-such-db"], "no database at"),
    (["serve", "{db}", "--table", "nope"], "unknown table"),
    # an over-long path (the OS would answer ENAMETOOLONG), wherever a path is taken
    (["query", "{db}", "--image", "{long}.jpg"], "not a usable path"),
    (["query", "{long}", "airport"], "not a usable path"),
    (["info", "{long}"], "not a usable path"),
    (["locate", "{long}.jpg", "x", "--model", "{model}"], "not a usable path"),
    (["locate", "{long}.tif", "x", "--model", "{model}"], "not a usable path"),
    (["locate", "{img}", "x", "--model", "{long}"], "not a usable path"),
    (["classify", "{long}.jpg", "{img}", "--labels", "a", "b", "--model", "{model}"], "not a usable path"),
    (["locate", "{img}", "x", "--model", "{model}", "--grid", "1", "1", "--out", "{long}.png"], "not a usable path"),
    # raster errors: a broken file, a disguised one, names GDAL would follow
    (["locate", "{tmp}/broken.tif", "x", "--model", "{model}"], "broken.tif: not a readable raster"),
    (["locate", "{tmp}/vrt.tif", "x", "--model", "{model}"], "vrt.tif: not a readable raster"),
    (["locate", "{tmp}/vrt.jp2", "x", "--model", "{model}"], "vrt.jp2: not a readable raster"),
    (["query", "{db}", "--image", "{tmp}/vrt.tif"], "vrt.tif: not a readable raster"),
    (["locate", "ftp://127.0.0.1:9/x.tif", "x", "--model", "{model}"], "URIs only"),
    (["locate", "https://127.0.0.1:9/x.tif", "x", "--model", "{model}"], "addresses are never read"),
    (["locate", "http://169.254.169.254/x.tif", "x", "--model", "{model}"], "addresses are never read"),
    (["locate", "/vsicurl/http://127.0.0.1:9/x.tif", "x", "--model", "{model}"], "(/vsi...) are not opened"),
    # Lance errors: the SQL filter, at parse, plan and evaluation time
    (["query", "{db}", "airport", "--where", "uri LIKE"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "uri = 'open"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "uri > 1"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "uri"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "nosuchfn(uri)"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "width / 0 > 1"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "cast(uri as int) > 1"], "not valid SQL"),
    (["query", "{db}", "airport", "--where", "x = 'a'; DROP TABLE tiles"], "not valid SQL"),
    # unreadable images and refused formats
    (["query", "{db}", "--image", "/dev/zero"], "not a regular file"),
    (["query", "{db}", "--image", "{tmp}"], "not a regular file"),
    (["locate", "{tmp}/svg.png", "x", "--model", "{model}"], "svg.png: not a readable image"),
    (["classify", "{tmp}/eps.png", "{img}", "--labels", "a", "b", "--model", "{model}"], "eps.png: not a readable"),
    (["locate", "{img}", "{tmp}/garbage.jpg", "--model", "{model}"], "garbage.jpg: not a readable image"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[:1] + a[2:4]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(cli_db, tiny_model, tmp_path, capsys, argv, message):
    db, files = cli_db
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    vrt = ('<VRTDataset rasterXSize="64" rasterYSize="16"><VRTRasterBand dataType="Byte" band="1" '
           'subClass="VRTRawRasterBand"><SourceFilename>/etc/passwd</SourceFilename></VRTRasterBand></VRTDataset>')
    for name in ("vrt.tif", "vrt.jp2"):
        (tmp_path / name).write_text(vrt)
    (tmp_path / "svg.png").write_text('<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///etc/passwd"/></svg>')
    (tmp_path / "eps.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    fill = dict(db=db, img=files[0], tmp=tmp_path, model=tiny_model, long="/tmp/" + "a" * 5000)
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and err.startswith("rsclip: error: ")
    assert message in err


UNREACHABLE = [
    ["query", "s3://{bucket}/db", "airport"],
    ["info", "s3://{bucket}/db"],
    ["query", "{db}", "--image", "s3://{bucket}/x.jpg"],
    ["locate", "s3://{bucket}/x.jpg", "x", "--model", "{model}"],
    ["locate", "s3://{bucket}/x.tif", "x", "--model", "{model}"],
    ["locate", "{img}", "x", "--model", "s3://{bucket}/model"],
    ["locate", "{img}", "x", "--model", "{model}", "--grid", "1", "1", "--out", "s3://{bucket}/heat.png"],
]


@pytest.mark.parametrize("argv", UNREACHABLE, ids=[" ".join(a[:2]) for a in UNREACHABLE])
def test_unreachable_store_is_one_line_and_exit_2(cli_db, tiny_model, capsys, monkeypatch, argv):
    from infra.local_stack import free_port

    db, files = cli_db
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for name, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    fill = dict(db=db, img=files[0], model=tiny_model, bucket="rsclip-nowhere")
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert err.startswith("rsclip: error: s3://rsclip-nowhere/") and "cannot reach the object store" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["query"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


# ---------------------------------------------------------------- issue 25: what the commands show and take


def test_the_ids_query_shows_are_what_label_add_takes_and_label_list_shows_their_uris(cli_db, capsys, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(cli_db[0], db)  # labels are written beside the tiles: a copy keeps the module's table
    code, out, _ = run(capsys, "query", db, "airport", "-k", 3)
    want = rsclip.query(db, "airport", k=3)
    shown = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert code == 0 and shown == want["id"].tolist()
    code, _, err = run(capsys, "label", "add", db, "port", "--positive", shown[0], "--negative", shown[1])
    assert code == 0, err
    code, out, _ = run(capsys, "label", "list", db, "port", "--json")
    listed = {r["id"]: r["uri"] for r in json.loads(out)}
    assert code == 0 and listed == dict(zip(want["id"][:2], want["uri"][:2]))
    code, out, _ = run(capsys, "label", "list", db, "port")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:2] == ["id", "uri"] and len(lines) == 3
    for tile, uri in listed.items():
        assert any(line.split()[:2] == [tile, uri] for line in lines[1:]), out


def test_json_writes_null_for_an_unknown_date(cli_db, capsys):
    code, out, _ = run(capsys, "query", cli_db[0], "airport", "-k", 3, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3 and all("datetime" in r and r["datetime"] is None for r in rows), out


@pytest.mark.parametrize("near", [["-170,-80,20000"], ["-170", "-80", "20000"], ["-99.15,47.02,2"]])
def test_near_takes_a_western_longitude_without_equals(cli_db, capsys, near):
    db, _ = cli_db
    code, out, err = run(capsys, "query", db, "beach", "-k", 50, "--near", *near, "--json")
    want = rsclip.query(db, "beach", k=50, near=[float(v) for v in ",".join(near).split(",")])
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == want["id"].tolist()
    assert len(want) == (0 if near == ["-99.15,47.02,2"] else N_IMAGES)


@pytest.mark.parametrize("where", ["uri > 1", "width / 0 > 1", "cast(uri as int) > 1"])
def test_a_bad_where_is_named_without_the_source_paths_of_the_lance_build(cli_db, capsys, where):
    code, out, err = run(capsys, "query", cli_db[0], "airport", "--where", where)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert f"the filter {where!r} is not valid SQL" in err
    assert ".rs:" not in err and ".cargo" not in err and "/src/" not in err, err


READ_ONLY = [
    ["query", "{db}", "airport"],
    ["query", "{db}", "--image", "{img}"],
    ["label", "list", "{db}"],
    ["label", "list", "{db}", "port"],
    ["label", "export", "{db}", "port", "--out", "{tmp}/labels.geojson"],
    ["export", "{db}", "--query", "airport", "--out", "{tmp}/hits.geojson"],
    ["export", "{db}", "--detections", "port", "--out", "{tmp}/hits.geojson"],
    ["info", "{db}"],
    ["index", "{db}"],
    ["upgrade", "{db}"],
    ["timeline", "{db}", "--at", "10", "45"],
    ["changes", "{db}", "2020", "2021"],
    ["serve", "{db}"],
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=[" ".join(a[:2]) for a in READ_ONLY])
def test_a_mistyped_database_is_reported_and_never_created(cli_db, capsys, tmp_path, argv):
    typo = tmp_path / "tabels"
    fill = dict(db=typo, img=cli_db[1][0], tmp=tmp_path)
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2 and not out and err.strip() == f"rsclip: error: no database at {typo}", err
    assert not typo.exists() and sorted(tmp_path.iterdir()) == []
