"""jobs/embed_archive.py end to end: `ray job submit` to a real Ray head, real SeaweedFS, real LanceDB.

Concurrent jobs on disjoint prefixes, grid arithmetic and bounds on real GeoTIFFs, kill -9 of the driver and
rerun (exact row set), and fast clear failures for systemic faults.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window, bounds as window_bounds

import rsclip
from rsclip.runtime import storage
from rsclip.table import fragments, tiles
from tests.helpers import BUCKET, GEOTIFF_DIR, ROOT, job_windows

JOB = "jobs/embed_archive.py"
NAIP = "m_4709963_se_14_1_20200831.tif"
# two jobs share the 2-CPU head: each leaves room for the other's readers
SHARE = ["--cpus-per-actor", "0.5", "--read-cpus", "0.5", "--read-tasks", "1"]


def upload(s3, files, key_prefix):
    client = s3.client()
    for f in files:
        client.upload_file(str(f), BUCKET, f"{key_prefix}/{f.name}")


def key_of(prefix: str) -> str:
    return prefix.split("/", 3)[3]


def test_two_submitted_jobs_on_disjoint_prefixes_both_land(ray_head, s3, s3_prefix, tiny_model, rsicd_files):
    scenes = [GEOTIFF_DIR / NAIP, GEOTIFF_DIR / "RGB.byte.tif"]
    upload(s3, scenes, f"{key_of(s3_prefix)}/scenes")
    upload(s3, rsicd_files[100:110], f"{key_of(s3_prefix)}/chips")
    db = f"{s3_prefix}/db"
    common = ["--db", db, "--model", str(tiny_model), "--max-chip", "512", "--tile-size", "256",
              "--overlap", "32", "--batch-size", "8", *SHARE]
    results = {}

    def submit(name, archive, *extra):
        results[name] = ray_head.submit(["python", JOB, "--archive", archive, *common, *extra],
                                        working_dir=ROOT, timeout=600)

    threads = [threading.Thread(target=submit, args=("scenes", f"{s3_prefix}/scenes", "--bands", "4,1,2")),
               threading.Thread(target=submit, args=("chips", f"{s3_prefix}/chips", "--bands", "4,1,2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, res in results.items():
        assert res.returncode == 0, f"{name}: {res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    # NAIP has 4 bands (4,1,2 = false colour); RGB.byte.tif has 3, so --bands 4,1,2 fails there: recorded
    assert "2 files" in results["scenes"].stdout and "1 failed" in results["scenes"].stdout
    assert "10 files, 10 tiles planned: 10 embedded" in results["chips"].stdout

    table = tiles.open_table(db)
    rows = table.to_arrow().to_pylist()
    with rasterio.open(GEOTIFF_DIR / NAIP) as src:
        windows = job_windows(GEOTIFF_DIR / NAIP, 256, 32)
        naip = [r for r in rows if r[tiles.URI].endswith(NAIP)]
        # 934 x 723 px, 256 px windows every 224 px on the CRS's grid (5 m pixels: 97180 columns and 1041849 rows
        # from its origin: columns 36, 260, 484 and rows 25, 249), plus windows moved inward at the edges: 5 by 4
        assert len(naip) == len(windows) == 5 * 4
        assert {(r[tiles.X], r[tiles.Y], r[tiles.WIDTH], r[tiles.HEIGHT]) for r in naip} == set(windows)
        for r in naip:
            want = transform_bounds(src.crs, "EPSG:4326", *window_bounds(
                Window(r[tiles.X], r[tiles.Y], r[tiles.WIDTH], r[tiles.HEIGHT]), src.transform))
            np.testing.assert_allclose([r[c] for c in tiles.BOUNDS_COLUMNS], want, atol=1e-9)
            assert r[tiles.CRS] == "EPSG:26914"
    chips = [r for r in rows if "/chips/" in r[tiles.URI]]
    assert len(chips) == 10 and len(rows) == 30 and len({r[tiles.ID] for r in rows}) == 30

    hits = rsclip.query(db, "farmland", k=5)
    assert len(hits) == 5 and hits["score"].is_monotonic_decreasing
    lon, lat = naip[0][tiles.LON_MIN], naip[0][tiles.LAT_MIN]
    boxed = rsclip.query(db, "farmland", k=50, bbox=(lon - 1, lat - 1, lon + 1, lat + 1))
    assert set(boxed[tiles.URI]) == {naip[0][tiles.URI]}


def _rows(db) -> int:
    try:
        return tiles.open_table(db).count_rows()
    except ValueError:
        return 0


def test_kill_9_of_the_driver_then_rerun_gives_the_exact_row_set(ray_head, s3, s3_prefix, tiny_model,
                                                                 rsicd_files):
    files = rsicd_files[200:260]
    upload(s3, files, f"{key_of(s3_prefix)}/chips")
    archive, db = f"{s3_prefix}/chips", f"{s3_prefix}/db"
    args = ["--archive", archive, "--db", db, "--model", str(tiny_model), "--batch-size", "4",
            "--commit-rows", "4", "--index", "never", *SHARE]
    # A plain driver connected to the head (RAY_ADDRESS): the process we kill is the job's driver itself.
    env = {**ray_head.process_env(), "RAY_ADDRESS": ray_head.address}
    driver = subprocess.Popen([sys.executable, JOB, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for line in driver.stdout:  # the driver logs each commit; kill it right after the first one
            if b"committed" in line:
                os.kill(driver.pid, signal.SIGKILL)  # only the PID we started
                break
        driver.wait(60)
        assert driver.returncode == -signal.SIGKILL, driver.stdout.read().decode()[-3000:]
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(30)
        driver.stdout.close()
    at_kill = _rows(db)
    assert 0 < at_kill < len(files), at_kill
    print("uncommitted files at the kill:", len(uncommitted_files(tiles.open_table(db))))

    res = ray_head.submit(["python", JOB, *args], working_dir=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = tiles.open_table(db)
    ids = table.to_arrow().column(tiles.ID).to_pylist()
    want = {tiles.tile_id(f"{archive}/{f.name}", 0, 0, 150, 150) for f in files}
    assert len(ids) == len(want) and set(ids) == want
    assert f"{len(files) - at_kill} embedded, {at_kill} skipped as present" in res.stdout, res.stdout[-2000:]
    # what the killed driver's workers wrote and it never committed is gone: every data file is in the table
    assert uncommitted_files(table) == set()
    fs, pending = storage.filesystem(fragments.pending_root(table.to_lance().uri))
    fs.invalidate_cache()
    assert [p for p in fs.find(pending) if p.endswith(".json")] == [], "write records left behind"


def uncommitted_files(table) -> set[str]:
    """Data files of ``table`` that no fragment of its latest version names."""
    dataset = table.to_lance()
    fs, data = storage.filesystem(f"{dataset.uri}/data")
    stored = {p.rsplit("/", 1)[-1] for p in fs.ls(data, detail=False, refresh=True)}  # not s3fs's cached listing
    return stored - {f.path for frag in dataset.get_fragments() for f in frag.metadata.files}


@pytest.mark.parametrize("fault", ["credentials", "archive bucket", "db bucket", "endpoint"])
def test_systemic_faults_stop_the_job_fast_with_a_clear_message(s3, s3_prefix, tiny_model, fault):
    archive, db = f"{s3_prefix}/x", f"{s3_prefix}/db"
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    if fault == "credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret"
        expect = "rejected the credentials"
    elif fault == "archive bucket":
        archive = "s3://no-such-bucket-rsclip/x"
        expect = "bucket 'no-such-bucket-rsclip' of s3://no-such-bucket-rsclip/x does not exist"
    elif fault == "db bucket":
        db = "s3://no-such-db-bucket/tables"
        expect = "table store s3://no-such-db-bucket/tables"
    else:
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
        expect = "cannot reach http://127.0.0.1:9"
    res = subprocess.run([sys.executable, JOB, "--archive", archive, "--db", db, "--model", str(tiny_model)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "embed_archive: error:" in res.stderr and expect in res.stderr, res.stderr[-2000:]
