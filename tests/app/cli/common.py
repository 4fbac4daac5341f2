"""What the command-line tests share: a table of real scenes on a grid, and running ``rsclip`` in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsclip.app.cli import main
from tests.helpers import spread_files, write_scene_table

N_IMAGES = 40


def grid_table(db: Path, tiny_model, rsicd_files) -> list[Path]:
    """``N_IMAGES`` real scenes embedded with the tiny model into ``db``, on a 0.5-degree grid around (10 E,
    45 N); returns their files."""
    files = spread_files(rsicd_files, N_IMAGES)
    lon = 10.0 + 0.5 * (np.arange(N_IMAGES) % 8)
    lat = 45.0 + 0.5 * (np.arange(N_IMAGES) // 8)
    write_scene_table(db, tiny_model, files, lon_min=lon, lat_min=lat, lon_max=lon + 0.5, lat_max=lat + 0.5,
                      crs=["EPSG:4326"] * N_IMAGES)
    return files


def run(capsys, *argv) -> tuple[int, str, str]:
    """``rsclip ARGV`` in this process: its exit status, stdout and stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
