"""The ``rsclip`` command line before any command runs: start-up without the heavy libraries, ``--version``,
help that says what ``DB`` is, negative numbers as values, and JSON for unknown values (issue 25)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

import numpy as np
import pandas as pd
import pytest

from rsclip.app.cli import build_parser, main
from rsclip.app.cli.options import numbers
from rsclip.app.cli.output import print_json, records, table_text
from rsclip.app.records import dumps
from tests.helpers import ROOT

HEAVY = ("torch", "transformers", "lancedb", "lance")
# main() on each argv in a fresh interpreter, then the heavy modules it imported
STARTUP = """
import contextlib, io, sys
from rsclip.app.cli import main
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_and_version_import_no_model_or_table_library():
    argvs = [["--help"], ["--version"], ["query", "--help"], ["serve", "--help"], ["label", "list", "--help"],
             ["export", "--help"]]
    res = subprocess.run([sys.executable, "-c", STARTUP.format(argvs=argvs, heavy=HEAVY)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", res.stdout


def test_a_command_imports_only_its_own_module():
    """``rsclip query --api URL`` (a service that is not there: exit 2) and ``rsclip query --help`` load no
    array, table or storage library: what makes a query through the API answer in a fraction of a second."""
    light = (*HEAVY, "numpy", "pandas", "pyarrow", "fsspec", "rsclip.app.cli.detect")
    code = STARTUP.format(argvs=[["query", "--help"], ["query", "db", "x", "--api", "http://127.0.0.1:9"]],
                          heavy=light).replace("assert exc.code == 0", "assert exc.code in (0, 2)")
    code = code.replace("main(argv)", "assert main(argv) == 2, argv")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", res.stdout


def test_a_mistyped_command_names_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["qurey", "db", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'qurey'" in err and "query" in err and "label" in err


def test_tables_align_numbers_right_and_texts_left_with_missing_values_as_dashes():
    rows = [{"id": "a", "score": 0.5, "count": 3, "crs": None, "note": "x" * 100},
            {"id": "bbbb", "score": 0.12345, "count": None, "crs": "EPSG:4326", "note": "two\nlines"}]
    lines = table_text(rows).splitlines()
    assert lines[0].split() == ["id", "score", "count", "crs", "note"]
    assert lines[1].startswith("a    ") and "0.5000" in lines[1] and lines[1].endswith("x" * 77 + "...")
    assert "0.1235" in lines[2] and " - " in lines[2] and lines[2].endswith("two lines")
    assert lines[1].index("0.5000") + 6 == lines[2].index("0.1235") + 6 == lines[0].index("score") + 5
    assert table_text([]) == "(no results)"
    rows = records(pd.DataFrame(rows))  # what a command prints alone, and what the API's JSON gives back
    assert table_text(rows) == table_text(json.loads(json.dumps(rows)))


def test_the_check_sees_a_heavy_import():
    code = STARTUP.format(argvs=[["--version"]], heavy=HEAVY).replace("import contextlib", "import torch, contextlib")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "'torch'" in res.stdout, res.stderr[-2000:]


def test_version_is_the_installed_package_version():
    res = subprocess.run([sys.executable, "-m", "rsclip", "--version"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == f"rsclip {metadata.version('rsclip')}", res


def test_serve_help_says_what_db_is_and_names_the_table_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--table TABLE" in out and "tile table" in out
    assert "DB" in out and "database" in out and "s3://" in out


WESTERN = [
    (["query", "db", "x", "--near", "-99.15,47.02,2"], "near", 3, (-99.15, 47.02, 2.0)),
    (["query", "db", "x", "--near", "-99.15", "47.02", "2"], "near", 3, (-99.15, 47.02, 2.0)),
    (["query", "db", "x", "--near=-99.15,47.02,2"], "near", 3, (-99.15, 47.02, 2.0)),
    (["query", "db", "x", "--near", "-.5,-47,2"], "near", 3, (-0.5, -47.0, 2.0)),
    (["query", "db", "x", "--bbox", "-99.2", "47", "-99.1", "47.1"], "bbox", 4, (-99.2, 47.0, -99.1, 47.1)),
    (["query", "db", "x", "--bbox", "-99.2,47,-99.1,47.1"], "bbox", 4, (-99.2, 47.0, -99.1, 47.1)),
    (["export", "db", "--query", "x", "--near", "-99.15,47.02,2", "--out", "o.csv"], "near", 3,
     (-99.15, 47.02, 2.0)),
    (["changes", "db", "2020", "2021", "--bbox", "-99.2,47,-99.1,47.1"], "bbox", 4, (-99.2, 47.0, -99.1, 47.1)),
    (["timeline", "db", "--at", "-99.15,47.02"], "at", 2, (-99.15, 47.02)),
]


@pytest.mark.parametrize("argv, option, count, want", WESTERN, ids=[" ".join(a[3:]) for a, *_ in WESTERN])
def test_western_longitudes_are_values_not_options(argv, option, count, want):
    args = build_parser().parse_args(argv)
    assert numbers(getattr(args, option), count, option) == want


def test_options_still_read_as_options(capsys):
    args = build_parser().parse_args(["query", "db", "x", "--near", "-99.15,47.02,2", "-k", "5"])
    assert args.k == 5 and args.near == ["-99.15,47.02,2"]
    with pytest.raises(SystemExit) as exc:  # an option where the numbers should be: still a usage error
        build_parser().parse_args(["query", "db", "x", "--near", "-k", "5"])
    assert exc.value.code == 2 and "--near" in capsys.readouterr().err


def test_json_records_write_null_for_unknown_values(capsys):
    frame = pd.DataFrame({"datetime": pd.to_datetime(["2020-08-31T10:00:00Z", None], utc=True),
                          "plain": np.array(["2020-01-01", "NaT"], dtype="datetime64[ns]"),
                          "cloud": [np.nan, np.inf], "count": pd.array([1, None], dtype="Int64"),
                          "vector": [np.ones(2, np.float32), np.zeros(2, np.float32)]})
    print_json(records(frame))
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["datetime"].startswith("2020-08-31 10:00:00") and rows[0]["plain"].startswith("2020-01-01")
    assert [rows[1][c] for c in ("datetime", "plain", "cloud", "count")] == [None] * 4
    assert rows[0]["cloud"] is None and rows[0]["count"] == 1 and "NaT" not in json.dumps(rows)


def row_by_row(frame: pd.DataFrame) -> list[dict]:
    """What records() must give, the slow way: pandas' rows, each value made JSON-safe."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if pd.api.types.is_scalar(v) and pd.isna(v):
                v = None
            elif isinstance(v, (float, np.floating)) and not np.isfinite(float(v)):
                v = None
            clean[k] = v.item() if isinstance(v, np.generic) else v
        out.append(clean)
    return out


def test_records_are_the_rows_made_json_safe_for_every_column_type():
    frame = pd.DataFrame({"id": ["a", None, "c"], "f64": [0.1, np.nan, -np.inf],
                          "f32": np.array([0.5, np.nan, 1e-8], dtype=np.float32),
                          "i32": np.array([1, 2, 3], dtype=np.int32), "u8": np.array([1, 2, 255], dtype=np.uint8),
                          "flag": [True, False, True], "Int64": pd.array([1, None, 3], dtype="Int64"),
                          "when": pd.to_datetime(["2020-08-31T10:00:00Z", None, "2021-01-01T00:00:00Z"], utc=True),
                          "obj": [np.float32(2.5), {"a": 1}, np.int64(7)]})
    rows = records(frame)
    assert rows == row_by_row(frame)
    assert [type(v) for v in rows[0].values()] == [type(v) for v in row_by_row(frame)[0].values()]
    assert json.loads(json.dumps(rows, default=str))[1] == {name: None for name in frame.columns} | {
        "i32": 2, "u8": 2, "flag": False, "obj": {"a": 1}}
    assert records(frame.head(0)) == [] and records(frame[[]]) == [{}, {}, {}]


def test_arrow_records_are_the_records_of_the_rows_frame():
    """A service answers a search from its Arrow rows: the JSON is what the command prints of their frame."""
    import pyarrow as pa

    from rsclip.app.records import arrow_records

    utc = pa.timestamp("us", tz="UTC")
    rows = pa.table({"id": ["a" * 32, "b" * 32, "c" * 32], "score": [0.9, 0.5, np.nan],
                     "x": pa.array([0, 224, 448], pa.int32()), "lon_min": [-1.5, np.inf, 2.25],
                     "crs": ["EPSG:32633", None, "EPSG:4326"], "cloud_cover": pa.array([0.1, None, 0.3], pa.float32()),
                     "datetime": pa.array([datetime(2020, 8, 31, 10, 0, 0, 500, tzinfo=timezone.utc), None,
                                           datetime(2021, 1, 1, tzinfo=timezone.utc)], utc),
                     "item_id": ["S2A_1", None, "S2B_2"]})
    found = arrow_records(rows)
    assert dumps(found) == dumps(records(rows.to_pandas())) and found[1]["datetime"] is None
    assert arrow_records(rows.slice(0, 0)) == []
