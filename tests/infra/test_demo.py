"""infra/demo.py (``make demo``) end to end with the tiny model: it leaves an archive and a table the web app
can use after everything it started has stopped (previews of the hits read, scene tiles placed on the map),
and its printed next steps run as printed."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rsclip.app.web.data import previews
from rsclip.geo.windows import DEFAULT_TILE_SIZE
from rsclip.table import tiles
from tests.helpers import GEOTIFF_DIR, ROOT, job_windows, require_shared_data

pytestmark = pytest.mark.slow  # a Ray head and the embedding job

NAIP = ("m_4709963_se_14_1_20200831.tif", "m_4709963_se_14_1_20090818.tif")


def test_the_demo_leaves_a_table_whose_tiles_the_app_can_show(tmp_path):
    require_shared_data()
    demo_dir = tmp_path / "demo"
    res = subprocess.run([sys.executable, "infra/demo.py", "--model", "tiny", "--images", "6", "--dir",
                          str(demo_dir)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    db = demo_dir / "tables"
    lines = res.stdout.strip().splitlines()
    serve = next(line.strip() for line in reversed(lines) if " serve " in line)  # the last words
    assert shlex.split(serve)[1:] == ["serve", str(db)] and Path(shlex.split(serve)[0]).is_file(), serve

    rows = tiles.open_table(db).to_arrow().to_pylist()
    assert all(Path(r[tiles.URI]).is_file() for r in rows)  # the archive outlives the demo, as local files
    for name in NAIP:  # scenes under --max-chip are cut into the tile grid, each tile placed and dated
        placed = [r for r in rows if r[tiles.URI].endswith(name)]
        assert len(placed) == len(job_windows(GEOTIFF_DIR / name, DEFAULT_TILE_SIZE)) > 1
        assert all(r[tiles.FOOTPRINT] and r[tiles.DATETIME] is not None for r in placed)
        assert {r[tiles.DATETIME].year for r in placed} == {int(name.rsplit("_", 1)[1][:4])}
    assert len([r for r in rows if not r[tiles.FOOTPRINT]]) == 6  # the chips: no georeference

    # what the app reads for the top hits, after the demo stopped everything it started
    for row in sorted(rows, key=lambda r: r[tiles.ID])[:12]:
        window = [row[c] for c in tiles.WINDOW_COLUMNS]
        assert previews.read_preview(row[tiles.URI], window, size=64).shape[2] == 3
        assert (previews.window_corners(row[tiles.URI], window) is None) == (not row[tiles.FOOTPRINT])

    query = next(line.strip() for line in reversed(lines) if " query " in line)
    out = subprocess.run([*shlex.split(query), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    hits = hits["hits"] if isinstance(hits, dict) else hits
    assert len(hits) == 5 and all(h["uri"].endswith(NAIP) for h in hits)
