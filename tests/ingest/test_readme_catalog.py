"""The README's "your own GeoTIFFs as a STAC catalog" recipe, run as written on the shared NAIP scenes and read
back by rsclip's STAC input: one item per dated file, with its date, an asset under the catalog's folder."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

from rsclip.ingest.stac import StacOptions, list_items
from tests.helpers import SHARED_DATA

README = Path(__file__).resolve().parents[2] / "README.md"
NAIP = sorted((SHARED_DATA / "geotiff").glob("m_*.tif"))


def readme_recipe() -> str:
    section = README.read_text().split("**Your own GeoTIFFs as a STAC catalog**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return "\n".join(line[2:] if line.startswith("  ") else line for line in code.splitlines())


def test_the_readme_recipe_builds_a_catalog_rsclip_embeds(tmp_path):
    assert len(NAIP) == 2
    for path in NAIP:
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(SHARED_DATA / "geotiff" / "RGB.byte.tif", tmp_path / "RGB.byte.tif")   # no date: left out
    script = tmp_path / "make_catalog.py"
    script.write_text(readme_recipe())
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300)
    sources = list_items(StacOptions(stac=str(tmp_path / "catalog.json"), assets=("image",)))
    assert sorted(Path(s.uri).name for s in sources) == [p.name for p in NAIP]
    assert all(not s.problem and Path(s.uri).parent == tmp_path for s in sources)
    days = sorted(datetime.datetime.fromtimestamp(s.datetime / 1e6, datetime.UTC).date().isoformat() for s in sources)
    assert days == ["2009-08-18", "2020-08-31"]
    assert sorted(s.item_id for s in sources) == [p.stem for p in NAIP]
