"""Tile footprints: the true WGS84 outline of windows of real GeoTIFFs, the antimeridian, the poles, and the
embedding job's planning that stores them."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window, bounds as window_bounds

from rsclip.geo import footprints, raster
from rsclip.table import tiles
from rsclip.geo.windows import grid_windows
from rsclip.errors import InvalidInput
from rsclip.ingest import planning
from tests.helpers.geo import LANDSAT, NAIP
from tests.helpers import GEOTIFF_DIR, ROOT, job_windows, require_shared_data


def corners_wgs84(src, window) -> np.ndarray:
    """The window's four corners transformed by rasterio (the reference the footprint must match)."""
    x, y, w, h = window
    cols, rows = np.array([x, x + w, x + w, x]), np.array([y, y, y + h, y + h])
    xs, ys = src.transform * (cols, rows)
    lon, lat = warp_transform(src.crs, "EPSG:4326", list(xs), list(ys))
    return np.column_stack([lon, lat])


@pytest.mark.parametrize("name", [NAIP, LANDSAT, "2020.tif"])
def test_footprints_of_real_scenes_hold_the_windows_transformed_corners(name):
    require_shared_data()
    with rasterio.open(GEOTIFF_DIR / name) as src:
        for window in grid_windows(src.width, src.height, 224, 32)[:12]:
            fp = footprints.window_footprint(src.transform, src.crs, window)
            assert fp.geom_type == "Polygon" and fp.is_valid and fp.exterior.is_ccw
            ring = np.asarray(fp.exterior.coords)[:-1]
            for corner in corners_wgs84(src, window):  # each corner is a vertex, to the float
                assert np.abs(ring - corner).max(axis=1).min() < 1e-9
            box = transform_bounds(src.crs, "EPSG:4326", *window_bounds(Window(*window), src.transform))
            np.testing.assert_allclose(fp.bounds, box, atol=1e-7)


def test_a_projected_window_is_not_its_bounding_box_and_neighbours_share_their_edge():
    require_shared_data()
    with rasterio.open(GEOTIFF_DIR / NAIP) as src:
        a = footprints.window_footprint(src.transform, src.crs, (0, 0, 224, 224))
        b = footprints.window_footprint(src.transform, src.crs, (224, 0, 224, 224))
        below = footprints.window_footprint(src.transform, src.crs, (0, 224, 224, 224))
    box = shapely.box(*a.bounds)
    assert box.area > a.area * 1.0005  # UTM grid north is not true north: the box is larger than the tile
    assert len(a.exterior.coords) == 5  # straight to a quarter pixel: four corners
    for other in (b, below):
        assert a.touches(other) and a.intersection(other).length > 0  # a whole shared edge, no sliver
    assert shapely.union_all([a, b, below]).geom_type == "Polygon"


def test_a_window_across_the_antimeridian_is_cut_in_two():
    transform = from_origin(700_000, 5_100_000, 100, 100)  # UTM 60N, east of 180
    fp = footprints.window_footprint(transform, "EPSG:32660", (0, 0, 2000, 1000))
    assert fp.geom_type == "MultiPolygon" and fp.is_valid
    west, east = sorted(fp.geoms, key=lambda g: g.bounds[0])
    assert west.bounds[0] == -180.0 and east.bounds[2] == 180.0
    assert fp.bounds[0] >= -180 and fp.bounds[2] <= 180
    assert fp.intersects(shapely.Point(179.9, 45.5)) and fp.intersects(shapely.Point(-179.9, 45.5))
    assert not fp.intersects(shapely.Point(0.0, 45.5))


def test_a_window_holding_the_pole_reaches_it_and_curves():
    transform = from_origin(-100_000, 100_000, 1000, 1000)  # NSIDC polar stereographic north
    fp = footprints.window_footprint(transform, "EPSG:3413", (0, 0, 200, 200))
    assert fp.is_valid and fp.bounds[3] == 90.0 and (fp.bounds[0], fp.bounds[2]) == (-180.0, 180.0)
    assert fp.contains(shapely.Point(37.0, 89.5)) and not fp.intersects(shapely.Point(37.0, 88.0))
    assert len(fp.exterior.coords) > 8  # curved edges keep their densified points
    off = footprints.window_footprint(transform, "EPSG:3413", (150, 150, 50, 50))  # a window beside the pole
    assert off.bounds[3] < 90.0 and off.is_valid


def test_box_footprints_of_bounds_and_folding():
    assert footprints.box_footprint(float("nan"), 0, 1, 1) is None
    wrapped = footprints.box_footprint(179.5, 45.0, -179.5, 46.0)  # bounds across the antimeridian
    assert wrapped.geom_type == "MultiPolygon" and wrapped.area == pytest.approx(1.0)
    folded = footprints.fold_longitudes(shapely.box(170, 0, 190, 10))
    assert folded.geom_type == "MultiPolygon" and folded.area == pytest.approx(200.0)
    with pytest.raises(InvalidInput):
        footprints.window_footprint(from_origin(0, 0, 1, 1), "EPSG:32660", (0, 0, 0, 10))


def test_planning_stores_each_windows_footprint_and_chips_have_none(rsicd_files):
    require_shared_data()
    path = GEOTIFF_DIR / NAIP
    rows = planning.plan_file(str(path), path.stat().st_size, raster.RasterOptions(tile_size=256, max_chip=128))
    with rasterio.open(path) as src:
        for row in rows:
            window = [row[c] for c in tiles.WINDOW_COLUMNS]
            want = footprints.window_footprint(src.transform, src.crs, window)
            assert shapely.from_wkb(row[tiles.FOOTPRINT]).equals_exact(want, 0.0)
    chip = rsicd_files[0]
    assert planning.plan_file(str(chip), chip.stat().st_size, raster.RasterOptions())[0][tiles.FOOTPRINT] == b""


def test_the_embedding_job_stores_footprints_through_ray(ray_head, tmp_path, tiny_model, rsicd_files):
    import shutil

    require_shared_data()
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(GEOTIFF_DIR / NAIP, archive / NAIP)
    shutil.copy(rsicd_files[0], archive / rsicd_files[0].name)
    db = tmp_path / "db"
    res = ray_head.submit(["python", "jobs/embed_archive.py", "--archive", str(archive), "--db", str(db),
                           "--model", str(tiny_model), "--tile-size", "256", "--max-chip", "512",
                           "--batch-size", "8", "--cpus-per-actor", "0.5", "--read-cpus", "0.5", "--index", "never"],
                          working_dir=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = tiles.open_table(db).to_arrow().to_pylist()
    with rasterio.open(GEOTIFF_DIR / NAIP) as src:
        scene = [r for r in rows if r[tiles.URI].endswith(NAIP)]
        assert len(scene) == len(job_windows(GEOTIFF_DIR / NAIP, 256))
        for r in scene:
            want = footprints.window_footprint(src.transform, src.crs, [r[c] for c in tiles.WINDOW_COLUMNS])
            assert shapely.from_wkb(r[tiles.FOOTPRINT]).equals_exact(want, 0.0)
    assert [r[tiles.FOOTPRINT] for r in rows if not r[tiles.URI].endswith(NAIP)] == [None]
