"""Time per tile (issue 17): date ranges, acquisition times, date/cloud/nodata filters on every query mode
(equal to brute force), old tables read and upgraded in place, timelines, changes, CRS-anchored grids, CLI.

The table is built from the real GeoTIFFs of ../shared/data listed through a STAC ItemCollection
(tests/helpers/stac.py says which dates are real and which are made up), embedded as the job does but
without Ray.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import rasterio
import shapely
from shapely.geometry import Point

import rsclip
from rsclip.app import cli
from rsclip.geo import dates, raster, windows
from rsclip.table import anchors, detections, rows, tiles
from rsclip.errors import InvalidInput
from rsclip.ingest import planning, stac
from rsclip.search.export import export_frame
from rsclip.search.review import review_detections
from tests.helpers import stac as H
from tests.helpers import GEOTIFF_DIR, require_shared_data

UTC = dt.timezone.utc
OPTIONS = raster.RasterOptions(tile_size=128, max_chip=64)


@pytest.fixture(scope="module")
def time_table(tmp_path_factory, tiny_model):
    """``(db, frame)``: the five items' visual assets (four readable) cut into 128 px tiles, and the table."""
    require_shared_data()
    root = tmp_path_factory.mktemp("time")
    items = H.build_items(H.build_scenes(root / "scenes"))
    sources = stac.list_items(stac.StacOptions(stac=str(H.write_item_collection(root / "items.json", items))))
    db = root / "db"
    H.embed_sources(db, tiny_model, sources, OPTIONS)
    return db, tiles.open_table(db).to_pandas()


# ---- dates ------------------------------------------------------------------------------------------------

def _micros(*args) -> int:
    return dates.to_micros(dt.datetime(*args, tzinfo=UTC))


def test_date_ranges_take_every_form_and_refuse_malformed_ones():
    day = dates.parse_range("2020-01-01/2021-06-30")
    assert (day.start, day.stop) == (_micros(2020, 1, 1), _micros(2021, 7, 1))  # the end day is included
    assert dates.parse_range(("2020", None)) == dates.DateRange(_micros(2020, 1, 1), None)
    assert dates.parse_range("../2021-06") == dates.DateRange(None, _micros(2021, 7, 1))
    assert dates.parse_range("2020-01-01/") == dates.DateRange(_micros(2020, 1, 1), None)
    assert dates.parse_range("2020-02") == dates.DateRange(_micros(2020, 2, 1), _micros(2020, 3, 1))
    instant = dates.parse_range("2020-08-31T17:00:00+02:00")
    assert (instant.start, instant.stop) == (_micros(2020, 8, 31, 15), _micros(2020, 8, 31, 15) + 1)
    assert dates.parse_range((dt.date(2020, 1, 1), dt.datetime(2020, 1, 2, 12))).stop == _micros(2020, 1, 2, 12) + 1
    assert dates.parse_range(pd.Timestamp("2020-01-01T00:00:00Z")).start == _micros(2020, 1, 1)
    span = dates.parse_range("2020")
    assert list(span.contains([_micros(2019, 12, 31, 23, 59, 59), _micros(2020, 6, 1), _micros(2021, 1, 1),
                               dates.NULL_MICROS])) == [False, True, False, False]
    for bad in ("2020-13-01/2021", "yesterday", "2021/2020", "../..", "2020/2021/2022", ("2020",), 20200101,
                "2020-02-30", "x" * 500):
        with pytest.raises(InvalidInput):
            dates.parse_range(bad)


def test_acquisition_time_comes_from_the_item_the_name_or_the_tiff_tags(tmp_path):
    require_shared_data()
    scene = tmp_path / "m_4709963_se_14_1_20200831.tif"
    shutil.copy(GEOTIFF_DIR / H.NAIP_2020, scene)
    plan = lambda **kw: planning.plan_file(str(scene), scene.stat().st_size, OPTIONS, **kw)[0]  # noqa: E731
    assert plan()[tiles.DATETIME] == dates.NULL_MICROS  # the real clip records no time
    with rasterio.open(scene, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2019:07:04 10:20:30")
    assert plan()[tiles.DATETIME] == _micros(2019, 7, 4, 10, 20, 30)
    with rasterio.open(scene, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:
        dst.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2019-07-03T09:00:00Z")
    assert plan()[tiles.DATETIME] == _micros(2019, 7, 3, 9)  # the acquisition time before the file's time
    pattern = dates.name_pattern(r"_(?P<datetime>\d{8})\.tif$")
    assert plan(pattern=pattern)[tiles.DATETIME] == _micros(2020, 8, 31)  # a date in the name before the tags
    assert plan(pattern=dates.name_pattern(r"_(?P<when>\d{4})\.tif$"))[tiles.DATETIME] == _micros(2019, 7, 3, 9)
    for bad in (r"(\d{8})", "([", r"(?P<a>\d)(?P<b>\d)"):
        with pytest.raises(InvalidInput):
            dates.name_pattern(bad)


# ---- filters on every mode equal brute force -----------------------------------------------------------

def _expected(frame: pd.DataFrame, date=None, max_cloud=None, max_nodata=None) -> set[str]:
    keep = np.ones(len(frame), dtype=bool)
    if date is not None:
        span = dates.parse_range(date)
        when = frame[tiles.DATETIME]
        micros = np.array([dates.NULL_MICROS if pd.isna(t) else dates.to_micros(t.to_pydatetime()) for t in when])
        keep &= span.contains(micros)
    if max_cloud is not None:
        keep &= (frame[tiles.CLOUD_COVER] <= max_cloud).to_numpy()
    if max_nodata is not None:
        keep &= (frame[tiles.NODATA_FRACTION] <= max_nodata).to_numpy()
    return set(frame[tiles.ID][keep])


CASES = [dict(date=("2020-01-01", "2021-06-30")), dict(date=(None, "2020")), dict(date="2021-03-01/.."),
         dict(date="2021-06"), dict(date="1990/1991"), dict(max_cloud=5), dict(max_nodata=0.2),
         dict(date=("2009", "2021-12-31"), max_cloud=10, max_nodata=0.5)]


@pytest.mark.parametrize("case", CASES, ids=[json.dumps(c) for c in CASES])
def test_time_filters_equal_brute_force_on_every_query_mode(time_table, case):
    db, frame = time_table
    want = _expected(frame, **case)
    n = len(frame)
    vector = np.stack(frame[tiles.VECTOR].to_numpy())[0]
    assert set(rsclip.query(db, vector, k=n, **case)[tiles.ID]) == want
    assert set(rsclip.query(db, vector, k=n, resident=True, **case)[tiles.ID]) == want
    some = frame[tiles.ID].iloc[3]
    assert set(rsclip.query(db, positive=[some], k=n, **case)[tiles.ID]) == want - {some}
    assert set(rsclip.similar_tiles(db, some, n, **case)[tiles.ID]) == want - {some}
    assert set(review_detections(db, "any", **case)[tiles.ID]) == want
    if want:
        gdf = export_frame(db, query=vector, k=n, **case)
        assert set(gdf[tiles.ID]) == want
        times = {i: t for i, t in zip(frame[tiles.ID], frame[tiles.DATETIME])}
        assert all(t == times[i].strftime("%Y-%m-%dT%H:%M:%S.%fZ") for i, t in zip(gdf[tiles.ID], gdf["datetime"]))
    hits = rsclip.query(db, vector, k=min(n, 5), **case)
    assert len(hits) == min(5, len(want)) and hits["score"].is_monotonic_decreasing
    if len(hits):
        assert set(hits.columns) >= set(tiles.TIME_COLUMNS)


@pytest.fixture(scope="module", autouse=True)
def _detections(time_table):
    """Every tile of the time table detected as label ``any`` (score from its position)."""
    db, frame = time_table
    n = len(frame)
    batch = pa.Table.from_pydict({
        detections.KEY: [detections.detection_key("any", i) for i in frame[tiles.ID]], tiles.ID: list(frame[tiles.ID]),
        detections.LABEL: ["any"] * n, detections.MODEL_VERSION: ["v"] * n,
        detections.SCORE: np.linspace(0.1, 0.9, n).astype(np.float32),
        detections.LOGIT: np.log(np.linspace(0.1, 0.9, n) / (1 - np.linspace(0.1, 0.9, n))),
        **{c: frame[c].to_numpy() for c in tiles.BOUNDS_COLUMNS}, detections.TIME: [dt.datetime.now(UTC)] * n,
    }, schema=detections.DETECTIONS_SCHEMA)
    detections.upsert(detections.open_detections(db, create=True), batch)


def test_time_filters_refuse_malformed_values(time_table):
    db, frame = time_table
    vector = np.stack(frame[tiles.VECTOR].to_numpy())[0]
    for bad in (dict(date="2020-13/2021"), dict(date="../.."), dict(max_cloud=101), dict(max_nodata=-0.1),
                dict(max_cloud="lots"), dict(max_nodata=float("nan"))):
        with pytest.raises(InvalidInput):
            rsclip.query(db, vector, k=3, **bad)


# ---- old tables ------------------------------------------------------------------------------------------

def test_old_tables_are_searched_as_they_are_and_upgraded_in_place(time_table, tmp_path, capsys):
    db, frame = time_table
    old_fields = [f for f in tiles.open_table(db).schema if f.name not in (*tiles.TIME_COLUMNS, tiles.FOOTPRINT,
                                                                           tiles.SOURCE_VERSION)]
    metadata = {k: v for k, v in tiles.open_table(db).schema.metadata.items() if k == tiles.META_MODEL
                or k == tiles.META_DIM}  # what the oldest tables record
    old_schema = pa.schema(old_fields, metadata=metadata)
    old_db = tmp_path / "old"
    old = tiles.connect(old_db).create_table("tiles", schema=old_schema)
    old.add(pa.Table.from_pandas(frame[[f.name for f in old_fields]], schema=old_schema, preserve_index=False))
    vector = np.stack(frame[tiles.VECTOR].to_numpy())[0]
    hits = rsclip.query(old_db, vector, k=5)
    assert len(hits) == 5 and not set(tiles.TIME_COLUMNS) & set(hits.columns)
    assert rsclip.query(old_db, vector, k=5, date="2020").empty  # unknown times never pass a date filter
    assert rsclip.query(old_db, vector, k=5, resident=True, max_cloud=50).empty
    place = frame[tiles.ID].iloc[0]
    assert len(rsclip.timeline(old_db, place)) >= 1
    assert anchors.settle_grid(tiles.open_table(old_db)) == windows.GRID_SCENE  # cut before grids were recorded

    assert cli.main(["upgrade", str(old_db)]) == 0
    assert "datetime" in capsys.readouterr().out
    upgraded = tiles.open_table(old_db).to_pandas()
    assert set(upgraded.columns) == set(tiles.COLUMNS) and len(upgraded) == len(frame)
    assert upgraded[list(tiles.TIME_COLUMNS)].isna().all().all()
    vectors = dict(zip(frame[tiles.ID], frame[tiles.VECTOR]))
    assert all(np.array_equal(v, vectors[i]) for i, v in zip(upgraded[tiles.ID], upgraded[tiles.VECTOR]))
    assert rsclip.query(old_db, vector, k=5, date="2020").empty
    assert cli.main(["upgrade", str(old_db)]) == 0 and "up to date" in capsys.readouterr().out
    assert anchors.settle_grid(tiles.open_table(db)) == windows.GRID_CRS  # a new table's grid
    with pytest.raises(InvalidInput, match="grid"):
        anchors.settle_grid(tiles.open_table(old_db), windows.GRID_CRS)


# ---- timelines and changes -------------------------------------------------------------------------------

def _covering(frame: pd.DataFrame, lon: float, lat: float) -> set[str]:
    outlines = rows.tile_footprints(frame)
    return {i for i, g in zip(frame[tiles.ID], outlines) if g is not None and g.covers(Point(lon, lat))}


def test_timeline_returns_exactly_the_tiles_containing_the_point_by_date(time_table):
    db, frame = time_table
    rng = np.random.default_rng(17)
    naip = frame[frame[tiles.ITEM_ID].str.startswith("naip")]
    landsat = frame[frame[tiles.ITEM_ID].str.startswith("landsat")]
    points = []
    for part in (naip, landsat):
        lo, hi = part[[tiles.LON_MIN, tiles.LAT_MIN]].min().to_numpy(), part[[tiles.LON_MAX, tiles.LAT_MAX]].max()
        points += [tuple(lo + rng.random(2) * (hi.to_numpy() - lo)) for _ in range(6)]
    corner = shapely.from_wkb(naip[tiles.FOOTPRINT].iloc[5]).exterior.coords[0]  # on tile edges: they count
    points.append(corner)
    for lon, lat in points:
        line = rsclip.timeline(db, (lon, lat))
        assert set(line[tiles.ID]) == _covering(frame, lon, lat)
        known = line[tiles.DATETIME].dropna()
        assert known.is_monotonic_increasing and line[tiles.DATETIME].notna().sum() == len(known)
        if len(line):
            assert line["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    tile = naip[naip[tiles.ITEM_ID] == "naip-2020"][tiles.ID].iloc[7]
    line = rsclip.timeline(db, tile, reference="2020-09-15")
    assert {"naip-2009", "naip-2020"} <= set(line[tiles.ITEM_ID])
    ref = line[line[tiles.ITEM_ID] == "naip-2020"]
    assert (ref["similarity"] > 0.9999).any()  # the tile nearest the reference date compares as itself
    by_id = rsclip.timeline(db, tile, reference=tile)
    assert by_id.loc[by_id[tiles.ID] == tile, "similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert rsclip.timeline(db, tile, date="2020").pipe(lambda f: set(f[tiles.ITEM_ID])) == {"naip-2020"}
    with pytest.raises(InvalidInput):
        rsclip.timeline(db, (200.0, 10.0))


def test_changes_pair_each_place_with_its_other_date(time_table):
    db, frame = time_table
    moved = rsclip.changes(db, "2009", "2020", k=None)
    vectors = dict(zip(frame[tiles.ID], frame[tiles.VECTOR]))
    naip_2009 = frame[frame[tiles.ITEM_ID] == "naip-2009"]
    assert len(moved) and set(moved[tiles.ID]) <= set(naip_2009[tiles.ID])
    assert (moved["overlap"] > 0.98).all()  # the same windows; the two clips' grids differ by a fifth of a pixel
    assert (moved["datetime_b"].dt.year == 2020).all() and moved["change"].is_monotonic_decreasing
    for row in moved.itertuples():
        a, b = vectors[row.id], vectors[row.id_b]
        assert row.similarity == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)
        other = frame.loc[frame[tiles.ID] == row.id_b, [tiles.X, tiles.Y]].iloc[0]
        # the same window; at the bottom edge one row apart: the 2009 clip has 724 rows, the 2020 one 723
        assert row.x == other[tiles.X] and abs(row.y - other[tiles.Y]) <= 1
    stretched = rsclip.changes(db, "2021-03", "2021-06-01/2021-06-30", k=3)
    assert len(stretched) == 3 and (stretched["overlap"] == 1.0).all() and (stretched["change"] > 0).all()
    west = rsclip.changes(db, "2009", "2020", bbox=(-180, -90, float(moved[tiles.LON_MIN].median()), 90), k=None)
    assert 0 < len(west) < len(moved)
    assert rsclip.changes(db, "2009", "2020", max_cloud=-0.0 + 0.0, k=None).shape[0] == len(moved)
    with pytest.raises(InvalidInput):
        rsclip.changes(db, "2009", "2020", min_overlap=0)


# ---- grids -----------------------------------------------------------------------------------------------

def _part(src, left: int, top: int, width: int, height: int, path):
    from rasterio.windows import Window

    window = Window(left, top, width, height)
    profile = dict(src.profile, width=width, height=height, transform=src.window_transform(window))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(src.read(window=window))
    return path


@pytest.mark.filterwarnings("ignore::rasterio.errors.NodataShadowWarning")
def test_scenes_of_one_grid_line_up_across_dates_whatever_their_corners(tmp_path):
    require_shared_data()
    with rasterio.open(GEOTIFF_DIR / H.NAIP_2020) as src:
        first = _part(src, 37, 11, 700, 600, tmp_path / "a.tif")
        second = _part(src, 150, 90, 700, 600, tmp_path / "b.tif")  # another scene extent of the same grid

    def outlines(path, grid):
        options = raster.RasterOptions(tile_size=128, max_chip=64, grid=grid)
        rows = planning.plan_file(str(path), path.stat().st_size, options)
        return [r[tiles.FOOTPRINT] for r in rows], rows

    a, rows = outlines(first, None)
    b, _ = outlines(second, None)
    shared = set(a) & set(b)
    assert len(shared) >= 9  # the windows both scenes hold fully are one and the same
    with rasterio.open(first) as src:
        left, top = src.transform.c, src.transform.f
        for row in rows:
            if 0 < row[tiles.X] < src.width - 128 and 0 < row[tiles.Y] < src.height - 128:
                x, y = left + 5 * row[tiles.X], top - 5 * row[tiles.Y]
                # multiples of 128 px of 5 m from the CRS's origin, to the nearest pixel (this grid's phase is 1 m)
                assert abs((x + 320) % 640 - 320) <= 2.5 and abs((y + 320) % 640 - 320) <= 2.5
    assert not set(outlines(first, windows.GRID_SCENE)[0]) & set(outlines(second, windows.GRID_SCENE)[0])


# ---- the command line ------------------------------------------------------------------------------------

def test_the_command_line_filters_by_date_and_shows_timelines_and_changes(time_table, capsys):
    db, frame = time_table
    tile = frame[frame[tiles.ITEM_ID] == "naip-2020"][tiles.ID].iloc[7]
    assert cli.main(["query", str(db), "farmland", "-k", "50", "--date", "2020-01-01/2021-06-30", "--max-cloud",
                     "10", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found and {r[tiles.ID] for r in found} <= _expected(frame, date="2020-01-01/2021-06-30", max_cloud=10)
    assert cli.main(["timeline", str(db), tile, "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert tile in {r[tiles.ID] for r in line}
    lon, lat = rsclip.timeline(db, tile)[[tiles.LON_MIN, tiles.LAT_MIN]].iloc[0]
    assert cli.main(["timeline", str(db), "--at", str(lon + 1e-6), str(lat + 1e-6)]) == 0
    assert "naip" in capsys.readouterr().out
    assert cli.main(["changes", str(db), "2009", "2020", "-k", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert cli.main(["query", str(db), "farmland", "--date", "2020-13-01/2021"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "malformed date range" in err
    assert cli.main(["timeline", str(db)]) == 2
