"""jobs/embed_archive.py as a user runs it (a private local Ray, a local folder, a local table): a run that
embedded nothing fails in one line naming its kinds of failure; a run that embedded something succeeds, quietly,
with its rate from the first embedded batch on, and deletes the error rows of files gone from the archive."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from rsclip.table import tiles
from tests.helpers import ROOT

JOB = "jobs/embed_archive.py"
# Ray's own lines that a quiet run must not print (its log files keep them)
RAY_NOISE = ("core_worker.cc", "Started a local Ray instance", "Progress bars disabled", "execution finished",
             "fork", "INFO worker.py", "Token authentication")


def run_job(archive, db, model, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, JOB, "--archive", str(archive), "--db", str(db), "--model", str(model),
                           "--cpus-per-actor", "0.5", "--read-cpus", "0.5", "--read-tasks", "1", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two runs of the job, each with its own Ray
def test_nothing_embedded_fails_in_one_line_then_a_good_run_is_quiet_and_tidies_errors_of_deleted_files(
        tmp_path, tiny_model, rsicd_files):
    archive, db = tmp_path / "arch", tmp_path / "db"
    archive.mkdir()
    (archive / "empty.jpg").write_bytes(b"")
    for name in ("text.jpg", "gone.jpg"):
        (archive / name).write_bytes(b"this is not an image\n" * 10)

    bad = run_job(archive, db, tiny_model, "--verbose")  # Ray's lines come back on demand, the error stays last
    out = bad.stdout + bad.stderr
    assert bad.returncode == 2, out[-3000:]
    assert "Started a local Ray instance" in out
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("embed_archive: error: nothing embedded: 3 tiles failed (plan: "), last
    assert " x2" in last and f"first: {archive}/" in last and "every failure is a row of tiles_errors" in last, last
    assert "Traceback" not in out

    (archive / "gone.jpg").unlink()  # deleted from the archive: its error row must go
    for f in rsicd_files[:2]:
        shutil.copy(f, archive / f.name)
    good = run_job(archive, db, tiny_model)
    out = good.stdout + good.stderr
    assert good.returncode == 0, out[-3000:]
    noise = [line for line in out.splitlines() if any(n in line for n in RAY_NOISE)]
    assert not noise, noise
    summary = json.loads(next(line for line in good.stdout.splitlines() if line.startswith("summary: "))[9:])
    assert (summary["embedded"], summary["failed"]) == (2, 2), summary
    assert 0 < summary["startup_seconds"] <= summary["seconds"] and summary["images_per_s"] > 0, summary
    assert "images/s once embedding (first tiles after " in good.stdout and " s in all;" in good.stdout
    errors = tiles.connect(db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE)).to_arrow().to_pylist()
    assert sorted(r[tiles.URI].rsplit("/", 1)[1] for r in errors) == ["empty.jpg", "text.jpg"]
