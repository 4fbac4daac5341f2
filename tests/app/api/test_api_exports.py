"""Exports through ``rsclip api``: ``rsclip export`` and ``rsclip label export`` given ``--api`` write the file
they write alone, byte for byte (the service makes it, the command writes it where ``--out`` says, stdout
included); hostile or oversized export requests get one-line errors and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rsclip.app.api import exports, settings
from rsclip.app.cli import main
from rsclip.errors import LimitExceeded

pytestmark = pytest.mark.slow  # the package's service process, and a detection run on Ray

FORMATS = (("geojson", ".geojson"), ("geoparquet", ".parquet"), ("csv", ".csv"))


def written(capsys, argv: list[str]) -> str:
    """What a command printed (it must succeed)."""
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("format, suffix", FORMATS)
def test_export_through_the_api_writes_the_file_it_writes_alone(scenes, api_service, rsicd_files, tmp_path, capsys,
                                                                 format, suffix):
    db, ids = scenes
    sources = {
        "detections": ["--detections", "fields", "--min-score", "0.2"],
        "query": ["--query", "farmland", "-k", "7", "--bbox", "-180,-90,180,90"],
        "examples": ["--positive", ids[0], ids[1], "--negative", ids[2], "-k", "5", "--dissolve"],
        "image": ["--image", str(rsicd_files[0]), "-k", "3", "--where", "x >= 128"],
    }
    for name, argv in sources.items():
        alone, through = tmp_path / f"{name}-alone{suffix}", tmp_path / f"{name}-api{suffix}"
        said = written(capsys, ["export", str(db), *argv, "--out", str(alone), "--json"])
        said_through = written(capsys, ["export", str(db), *argv, "--out", str(through), "--json",
                                        "--api", api_service.url])
        assert said_through == said.replace(str(alone), str(through))
        assert json.loads(said)["rows"] > 0
        assert through.read_bytes() == alone.read_bytes(), name  # every search path: the same scores


def test_label_export_through_the_api_writes_the_same_file(scenes, api_service, tmp_path, capsys):
    db, _ = scenes
    for format, suffix in FORMATS:
        alone, through = tmp_path / f"labels{suffix}", tmp_path / f"labels-api{suffix}"
        said = written(capsys, ["label", "export", str(db), "fields", "--out", str(alone)])
        said_through = written(capsys, ["label", "export", str(db), "fields", "--out", str(through),
                                        "--api", api_service.url])
        assert said_through == said.replace(str(alone), str(through)) and "10 labelled tiles" in said
        assert through.read_bytes() == alone.read_bytes(), format


def test_an_export_to_stdout_through_the_api_is_the_file_and_loads_no_table_library(scenes, api_service, tmp_path):
    db, _ = scenes
    alone = tmp_path / "alone.geojson"
    assert main(["export", str(db), "--detections", "fields", "--out", str(alone)]) == 0
    heavy = ("torch", "transformers", "lancedb", "lance", "numpy", "pandas", "pyarrow", "geopandas")
    argv = ["export", str(db), "--detections", "fields", "--out", "-", "--format", "geojson",
            "--api", api_service.url]
    code = (f"import sys; from rsclip.app.cli import main; code = main({argv!r}); "
            f"print(code, sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert res.stdout == alone.read_bytes()
    err = res.stderr.decode()
    assert err.endswith("0 []\n") and "feature(s) written to /dev/stdout (geojson)" in err, err[-2000:]


@pytest.mark.parametrize("body, status, words", [
    ({"text": "farmland"}, 400, "format is required"),
    ({"text": "farmland", "format": "shp"}, 400, "format must be one of"),
    ({"text": "farmland", "labels": "fields", "format": "csv"}, 400, "exactly one of"),
    ({"text": "farmland", "format": "csv", "colour": "red"}, 400, "unknown field 'colour'"),
    ({"text": "farmland", "format": "csv", "k": settings.MAX_EXPORT_FEATURES + 1}, 400, "k must be"),
    ({"text": "farmland", "format": "csv", "min_score": 0.5}, 400, "detections only"),
    ({"text": "farmland", "format": "csv", "dissolve": "yes"}, 400, "dissolve must be"),
    ({"detections": "fields", "k": 5, "format": "csv"}, 400, "by min_score"),
    ({"detections": "fields", "min_score": 1.5, "format": "csv"}, 400, ""),
    ({"detections": "nothing", "format": "csv"}, 404, ""),
    ({"labels": "../../etc/passwd", "format": "geojson"}, 400, ""),
    ({"labels": "fields", "format": "csv", "bbox": [0, 0, 1, 1]}, 400, "unknown field 'bbox'"),
    ({"positive": ["/etc/passwd"], "format": "csv"}, 400, "takes tile ids"),
    ({"text": "farmland", "format": "csv", "where": "id = 'none'"}, 400, "no tile matched"),
    ({"text": "farmland", "format": "csv", "db": "/somewhere/else"}, 400, "serves another database"),
])
def test_hostile_export_requests_get_one_line_errors(scenes, api_service, body, status, words):
    answer = api_service.call("api/export", body)
    assert answer.status == status, answer.body
    found = answer.json()
    assert set(found) == {"code", "description"} and "\n" not in found["description"]
    assert words in found["description"] and str(scenes[0]) not in found["description"]


def test_an_export_of_more_features_than_an_answer_holds_is_refused(scenes, monkeypatch):
    db, _ = scenes
    body = {"detections": "fields", "min_score": 0.0, "format": "geojson"}
    assert exports.export_file(str(db), "tiles", body).features > 5
    monkeypatch.setattr(settings, "MAX_EXPORT_FEATURES", 5)
    with pytest.raises(LimitExceeded, match="raise min_score"):
        exports.export_file(str(db), "tiles", body)
