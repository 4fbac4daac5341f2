"""Builders of real tile tables for the footprint, polygon, label, detection and export tests.

``scene_grid_table`` cuts real GeoTIFFs of ``../shared/data`` into grid tiles exactly as the embedding job
plans them (:func:`rsclip.ingest.planning.plan_file`: bounds, CRS and WKB footprints) and embeds the
windows with a tiny CLIP, without Ray. ``class_scene_table`` writes RSICD/AID scenes of known classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers import GEOTIFF_DIR, RSICD_IMAGES

NAIP = "m_4709963_se_14_1_20200831.tif"
LANDSAT = "RGB.byte.tif"


def scene_grid_table(db: Path, model: Path, names=(NAIP, LANDSAT), *, tile_size: int = 128) -> list[dict]:
    """A tile table at ``db`` of the grid windows of the GeoTIFFs ``names``; returns the planned rows."""
    from rsclip.geo import raster
    from rsclip.table import tiles
    from rsclip.model.clip import load_model
    from rsclip.ingest import planning

    options = raster.RasterOptions(tile_size=tile_size, max_chip=tile_size // 2)
    rows = []
    for name in names:
        path = GEOTIFF_DIR / name
        rows += planning.plan_file(str(path), path.stat().st_size, options)
    images = []
    for row in rows:
        with raster.open_raster(row[tiles.URI]) as src:
            scene = raster.describe_scene(src, options)
            pixels = raster.read_window(src, [row[c] for c in tiles.WINDOW_COLUMNS], scene)
        images.append(pixels if pixels is not None else np.zeros((row[tiles.HEIGHT], row[tiles.WIDTH], 3), np.uint8))
    encoder = load_model(model)
    columns = {c: [r[c] for r in rows] for c in (tiles.URI, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS)}
    columns[tiles.FOOTPRINT] = [r[tiles.FOOTPRINT] or None for r in rows]
    columns[tiles.VECTOR] = encoder.encode_images(images)
    tiles.add_tiles(tiles.create_table(db, model=str(model), dim=encoder.dim), columns)
    return rows


def detected_scene_table(db: Path, model: Path) -> tuple[list[dict], list[str], list[str]]:
    """NAIP and Landsat scenes cut into 128 px tiles at ``db``, the label set ``fields`` (4 NAIP tiles positive,
    6 others negative) and its detections (a local detection run); returns the rows, all tile ids and the NAIP
    ones."""
    from rsclip.detect.pipeline import DetectConfig, run_detection
    from rsclip.table import labels, tiles

    rows = scene_grid_table(db, model, names=(NAIP, LANDSAT), tile_size=128)
    ids = [tiles.tile_id(r[tiles.URI], *[r[c] for c in tiles.WINDOW_COLUMNS]) for r in rows]
    naip = [i for i, r in zip(ids, rows) if r[tiles.URI].endswith(NAIP)]
    labels.add_labels(db, "fields", naip[:4], [i for i in ids if i not in naip][:6])
    run_detection(DetectConfig(db=str(db), label="fields"), local=True)
    return rows, ids, naip


def class_files(classes: list[str], per_class: int) -> list[Path]:
    """The first ``per_class`` RSICD/AID scenes of each class (file-name prefix), class by class."""
    files = sorted(RSICD_IMAGES.glob("*.jpg"))
    return [f for c in classes for f in [g for g in files if g.name.rsplit("_", 1)[0] == c][:per_class]]


def class_of(uri: str) -> str:
    """The class of an RSICD/AID scene from its file name (``airport_17.jpg`` -> ``airport``)."""
    return Path(uri).name.rsplit("_", 1)[0]


def all_classes() -> list[str]:
    return sorted({class_of(str(f)) for f in RSICD_IMAGES.glob("*.jpg")})
