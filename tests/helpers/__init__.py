"""Helpers shared by the tests: where the real data lies, and small builders of real tables.

Tests import these directly (``from tests.helpers import ...``); ``conftest.py`` holds fixtures only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RSICD_DIR = SHARED_DATA / "rsicd-aid"
RSICD_IMAGES = RSICD_DIR / "RSICD_images"
GEOTIFF_DIR = SHARED_DATA / "geotiff"
BUCKET = "rsclip-test"


def require_shared_data() -> None:
    """Fail the calling test (not the session) when the shared real data is missing."""
    if not RSICD_IMAGES.is_dir() or not GEOTIFF_DIR.is_dir():
        pytest.fail(f"the shared real data is missing: {SHARED_DATA} (set RSCLIP_SHARED_DATA)")


def spread_files(files: list[Path], n: int) -> list[Path]:
    """``n`` files spread evenly over ``files`` (scenes of many classes, not the first class only)."""
    return files[:: len(files) // n][:n]


def write_scene_table(db: Path, model: Path, files: list[Path], **columns):
    """A table at ``db`` holding ``files`` as whole-image tiles (150 x 150 RSICD scenes) embedded with
    ``model``; ``columns`` (bounds, crs) are added to the rows. Returns the vectors written."""
    import numpy as np
    from PIL import Image

    from rsclip.table import tiles
    from rsclip.model.clip import load_model

    enc = load_model(model)
    vectors = enc.encode_images([np.asarray(Image.open(f).convert("RGB")) for f in files])
    n = len(files)
    rows = dict(uri=[str(f) for f in files], x=[0] * n, y=[0] * n, width=[150] * n, height=[150] * n,
                vector=vectors, **columns)
    tiles.add_tiles(tiles.create_table(db, model=str(model), dim=enc.dim), rows)
    return vectors


def job_windows(path: Path, tile: int, overlap: int = 0, width: int | None = None):
    """The grid windows the embedding job cuts from the GeoTIFF ``path`` (anchored to its CRS's grid), or from
    its first ``width`` columns."""
    import rasterio

    from rsclip.geo.raster import grid_origin
    from rsclip.geo.windows import grid_windows

    with rasterio.open(path) as src:
        return grid_windows(width or src.width, src.height, tile, overlap, origin=grid_origin(src))

