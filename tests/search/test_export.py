"""Exports a GIS opens: GeoJSON through GDAL/OGR (pyogrio), GeoParquet 1.1 through geopandas, geoarrow and
DuckDB's spatial extension, CSV with WKT; geometries are the windows' true footprints; dissolve; errors."""

from __future__ import annotations

import json
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
from rsclip.detect.pipeline import DetectConfig, run_detection
from rsclip.errors import InvalidInput, NotFound
from rsclip.search import export as ex
from tests.helpers.geo import LANDSAT, NAIP, scene_grid_table
from tests.helpers import GEOTIFF_DIR
from tests.geo.test_footprints import corners_wgs84


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, tiny_model):
    """NAIP and Landsat scenes cut into 128 px tiles, a label set and its detections."""
    db = tmp_path_factory.mktemp("export") / "db"
    rows = scene_grid_table(db, tiny_model, names=(NAIP, LANDSAT), tile_size=128)
    ids = [tiles.tile_id(r[tiles.URI], *[r[c] for c in tiles.WINDOW_COLUMNS]) for r in rows]
    naip = [i for i, r in zip(ids, rows) if r[tiles.URI].endswith(NAIP)]
    other = [i for i in ids if i not in naip]
    labels.add_labels(db, "fields", naip[:4], other[:6])
    run_detection(DetectConfig(db=str(db), label="fields"), local=True)
    return db, rows, ids, naip


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
