"""rsclip.ingest.planning: which windows a file is cut into (scenes always on the tile grid, small images whole)
and the rule a table cut before keeps, so that a rerun skips its files instead of adding tiles."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from rsclip.geo import raster, windows
from rsclip.ingest import batch as B, planning, reading
from rsclip.table import anchors, tiles
from tests.helpers import GEOTIFF_DIR, job_windows

NAIP_2009 = GEOTIFF_DIR / "m_4709963_se_14_1_20090818.tif"  # 934 x 724 px, EPSG:26914


def _plan(path, options=raster.RasterOptions(), **kwargs):
    return planning.plan_file(str(path), path.stat().st_size, options, **kwargs)


def _windows(rows) -> list[tuple[int, int, int, int]]:
    return [tuple(int(r[c]) for c in tiles.WINDOW_COLUMNS) for r in rows]


def test_a_georeferenced_scene_smaller_than_max_chip_is_cut_into_the_tile_grid():
    rows = _plan(NAIP_2009)
    assert max(934, 724) <= raster.DEFAULT_MAX_CHIP  # the size that used to make it one squashed tile
    want = job_windows(NAIP_2009, windows.DEFAULT_TILE_SIZE)
    assert len(rows) >= 12 and _windows(rows) == [tuple(w) for w in want]
    assert {r[B.STATUS] for r in rows} == {B.TODO} and {r[B.FILE_TILES] for r in rows} == {len(rows)}
    assert all(r[tiles.WIDTH] == r[tiles.HEIGHT] == windows.DEFAULT_TILE_SIZE for r in rows)
    assert {r[tiles.CRS] for r in rows} == {"EPSG:26914"} and all(r[tiles.FOOTPRINT] for r in rows)
    lon_min = [r[tiles.LON_MIN] for r in rows]
    assert len(set(lon_min)) > 1 and all(-99.2 < v < -99.1 for v in lon_min)  # each tile has its own place
    # the rule of tables cut before: the whole scene, one tile
    [whole] = _plan(NAIP_2009, whole_scenes=True)
    assert _windows([whole]) == [(0, 0, 934, 724)]


def test_a_scene_smaller_than_a_tile_is_one_window_of_all_of_it(tmp_path):
    path = tmp_path / "small.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=80, count=3, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(500000, 4500000, 30, 30)) as dst:
        dst.write(np.full((3, 80, 100), 7, np.uint8))
    [row] = _plan(path)
    assert _windows([row]) == [(0, 0, 100, 80)] and row[tiles.CRS] == "EPSG:32618" and row[tiles.FOOTPRINT]


def test_small_plain_images_stay_whole_and_large_ones_are_cut(tmp_path, rsicd_files):
    chip = Image.open(rsicd_files[0]).convert("RGB")
    jpeg, tiff, large = tmp_path / "chip.jpg", tmp_path / "chip.tif", tmp_path / "large.jpg"
    chip.resize((600, 600)).save(jpeg, quality=90)
    with rasterio.open(tiff, "w", driver="GTiff", width=600, height=600, count=3, dtype="uint8") as dst:
        dst.write(np.asarray(chip.resize((600, 600))).transpose(2, 0, 1))  # no CRS, no geotransform: a chip
    chip.resize((1100, 1100)).save(large, quality=90)
    assert _windows(_plan(jpeg)) == [(0, 0, 600, 600)]
    [row] = _plan(tiff)
    assert _windows([row]) == [(0, 0, 600, 600)] and not row[tiles.CRS] and not row[tiles.FOOTPRINT]
    assert _windows(_plan(large)) == [tuple(w) for w in windows.grid_windows(1100, 1100, windows.DEFAULT_TILE_SIZE)]


def _table_cut_before(db):
    """A tile table holding NAIP_2009 as one whole-scene tile (version v1), as tables were cut before scenes
    were always tiled: it records no scene rule."""
    rows = _plan(NAIP_2009, version="v1", whole_scenes=True)
    vectors = np.eye(4, dtype=np.float32)[: len(rows)]
    columns = {c: [r[c] for r in rows] for c in (tiles.URI, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS)}
    columns[tiles.SOURCE_VERSION] = [r[B.VERSION] for r in rows]
    table = tiles.create_table(db, model="m", dim=4)
    tiles.add_tiles(table, {**columns, tiles.VECTOR: vectors})
    data = table.to_arrow()
    meta = {k: v for k, v in data.schema.metadata.items() if k != tiles.META_SCENES}
    tiles.connect(db).create_table(tiles.DEFAULT_TABLE, data.replace_schema_metadata(meta), mode="overwrite")
    return tiles.open_table(db)


def test_a_table_cut_before_keeps_its_rule_so_a_rerun_skips_its_scenes(tmp_path):
    table = _table_cut_before(tmp_path / "old")
    assert anchors.settle_scenes(table) == windows.SCENES_WHOLE  # recorded: every later run cuts alike
    assert tiles.open_table(tmp_path / "old").schema.metadata[tiles.META_SCENES] == b"max-chip"
    # what the job's rerun plans for it (pipeline: whole_scenes from settle_scenes) is found present: no new row
    planned = B.rows_to_batch(_plan(NAIP_2009, version="v1", whole_scenes=True), B.PLAN_COLUMNS)
    marked = reading.mark_present(planned, str(tmp_path / "old"), tiles.DEFAULT_TABLE, table.version)
    assert list(marked[B.STATUS]) == [B.PRESENT]
    # the new rule on that table would plan other ids: tiles beside the whole-scene one (what the record avoids)
    tiled = B.rows_to_batch(_plan(NAIP_2009, version="v1"), B.PLAN_COLUMNS)
    assert set(reading.mark_present(tiled, str(tmp_path / "old"), tiles.DEFAULT_TABLE, table.version)[B.STATUS]) \
        == {B.TODO}

    new = tiles.create_table(tmp_path / "new", model="m", dim=4)
    assert new.schema.metadata[tiles.META_SCENES] == b"tiled" and anchors.settle_scenes(new) == windows.SCENES_TILED
    table.delete("true")  # a table left without tiles takes the rule of new tables
    assert anchors.settle_scenes(table) == windows.SCENES_TILED


def test_the_plan_stage_passes_the_tables_rule_on():
    listed = {tiles.URI: np.array([str(NAIP_2009)], object), B.SIZE: np.array([NAIP_2009.stat().st_size])}
    options = asdict(raster.RasterOptions())
    tiled = planning.plan_files(listed, options)
    assert len(tiled[tiles.ID]) == len(job_windows(NAIP_2009, 224)) and set(tiled[tiles.WIDTH]) == {224}
    assert list(planning.plan_files(listed, options, whole_scenes=True)[tiles.WIDTH]) == [934]
