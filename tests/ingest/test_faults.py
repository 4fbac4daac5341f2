"""Faults of one object against faults of the whole store, produced for real (issue 13, item 9).

A SeaweedFS user that may list an archive but read only part of it (an identity whose actions are limited to
a prefix, as an IAM role limited to a prefix or a KMS key), a local file of mode 000 (read by a process
without the capability to override file permissions when the tests run as root), object names that read like
store faults, and wrong credentials. One object the role cannot read is an error row and the job goes on;
only a fault of the whole store stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from infra.local_stack import SeaweedFS, environment
from rsclip.runtime import faults
from rsclip.geo import raster
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.errors import StoreUnavailable
from rsclip.ingest import batch as B, listing, planning
from tests.helpers import GEOTIFF_DIR, ROOT

pytestmark = pytest.mark.slow  # starts its own S3 server

BUCKET = "rsclip-limited"
READER_KEY, READER_SECRET = "rsclip-reader", "rsclip-reader-secret"
READER = {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
          "actions": [f"List:{BUCKET}", f"Read:{BUCKET}/arch/open/*"]}
JOB = "jobs/embed_archive.py"
# the job's resources on a shared 2-CPU box (a private local Ray)
SMALL = ["--cpus-per-actor", "0.5", "--read-cpus", "0.5", "--read-tasks", "1", "--index", "never"]


@pytest.fixture(scope="module")
def limited(tmp_path_factory, rsicd_files):
    """A SeaweedFS whose user ``reader`` may list the archive but read only ``arch/open/``; returns
    ``(server, reader's AWS variables, archive uri)``. The archive holds two good chips, a chip and a
    GeoTIFF under ``arch/locked/``, and two broken files under ``arch/open/`` named like store faults."""
    server = SeaweedFS(tmp_path_factory.mktemp("limited"), buckets=(BUCKET,), identities=(READER,)).start()
    try:
        client = server.client()
        for f in rsicd_files[:2]:
            client.upload_file(str(f), BUCKET, f"arch/open/{f.name}")
        client.upload_file(str(rsicd_files[2]), BUCKET, "arch/locked/secret.jpg")
        client.upload_file(str(GEOTIFF_DIR / "RGB.byte.tif"), BUCKET, "arch/locked/scene.tif")
        client.put_object(Bucket=BUCKET, Key="arch/open/NoSuchBucket.jpg", Body=b"not an image")
        client.put_object(Bucket=BUCKET, Key="arch/open/Connection refused.tif", Body=b"not a raster")
        env = {**server.env, "AWS_ACCESS_KEY_ID": READER_KEY, "AWS_SECRET_ACCESS_KEY": READER_SECRET}
        yield server, env, f"s3://{BUCKET}/arch"
    finally:
        server.stop()


def _raised(work) -> BaseException:
    try:
        work()
    except Exception as exc:
        return exc
    raise AssertionError("no error raised")


def test_a_denied_object_is_a_fault_of_that_object_in_every_client(limited):
    """s3fs (a chip), storage.read_bytes and GDAL (a GeoTIFF range read) report a per-object AccessDenied;
    each is classified DENIED, not store-wide, and planning records it as an error row saying so."""
    _, env, archive = limited
    chip, scene = f"{archive}/locked/secret.jpg", f"{archive}/locked/scene.tif"
    with environment(env):
        fs, path = storage.filesystem(chip)
        for uri, work in ((chip, lambda: fs.cat_file(path)), (chip, lambda: storage.read_bytes(chip)),
                          (scene, lambda: raster.open_raster(scene).__enter__())):
            exc = _raised(work)
            fault = faults.store_fault(exc, ignore=(uri,))
            assert fault is not None and fault.kind == faults.DENIED and not fault.store_wide, repr(exc)
            assert listing.store_down(exc, uri) is None
        for uri in (chip, scene):
            (row,) = planning.plan_file(uri, 1000, raster.RasterOptions(), "v1")
            assert row[B.STATUS] == B.ERROR and row[B.STAGE] == B.STAGE_PLAN
            assert row[B.MESSAGE].startswith(uri) and "access denied" in row[B.MESSAGE].lower(), row[B.MESSAGE]
        # the listing probe passes although HeadBucket is denied to a role limited to a prefix
        assert len(listing.list_archive(archive)) == 6


def test_names_that_read_like_store_faults_do_not_stop_anything(limited):
    _, env, archive = limited
    with environment(env):
        for name, part in (("NoSuchBucket.jpg", "not a readable image"),
                           ("Connection refused.tif", "not recognized as being in a supported file format")):
            uri = f"{archive}/open/{name}"
            (row,) = planning.plan_file(uri, 12, raster.RasterOptions(), "v1")
            assert row[B.STATUS] == B.ERROR and part in row[B.MESSAGE], row[B.MESSAGE]


def test_wrong_credentials_are_a_fault_of_the_whole_store(limited):
    _, env, archive = limited
    with environment({**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}):
        with pytest.raises(StoreUnavailable, match="rejected the credentials"):
            listing.list_archive(archive)
        # what a worker with wrong credentials sees while reading an object: confirmed store-wide
        fs, path = storage.filesystem(f"{archive}/open/x.jpg")
        exc = _raised(lambda: fs.find(path))
        assert faults.store_fault(exc).kind == faults.CREDENTIALS
        down = listing.store_down(exc, f"{archive}/open/x.jpg")
        assert isinstance(down, StoreUnavailable) and "rejected the credentials" in str(down)


def _without_file_permission_override() -> list[str]:
    """A command prefix under which a mode-000 file cannot be read: as root, drop the capabilities that
    bypass file permissions (children inherit the reduced bounding set); otherwise nothing is needed."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a mode-000 file cannot be made unreadable")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _job(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*_without_file_permission_override(), sys.executable, JOB, *args, *SMALL], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def _summary(res: subprocess.CompletedProcess) -> dict:
    line = next(line for line in res.stdout.splitlines() if line.startswith("summary: "))
    return json.loads(line[len("summary: "):])


def test_the_job_records_unreadable_objects_and_goes_on(limited, tmp_path, tiny_model, rsicd_files):
    """Through the job (a private local Ray): on S3, the locked chip and scene and the two broken files are
    error rows, the readable chips are embedded; locally, a chip and a GeoTIFF of mode 000 likewise."""
    _, s3_env, archive = limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("AWS_")}
    env.update(s3_env)
    db = tmp_path / "db"
    res = _job(["--archive", archive, "--db", str(db), "--model", str(tiny_model)], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    done = _summary(res)
    assert (done["files"], done["embedded"], done["failed"], done["failed_files"]) == (6, 2, 4, 4), done
    errors_rows = tiles.connect(db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE)).to_arrow().to_pylist()
    messages = {r[tiles.URI].rsplit("/", 1)[1]: r[B.MESSAGE].lower() for r in errors_rows}
    assert set(messages) == {"secret.jpg", "scene.tif", "NoSuchBucket.jpg", "Connection refused.tif"}
    assert "access denied" in messages["secret.jpg"] and "access denied" in messages["scene.tif"]

    local = tmp_path / "local"
    local.mkdir()
    for f in rsicd_files[:2]:
        shutil.copy(f, local / f.name)
    shutil.copy(rsicd_files[2], local / "locked.jpg")
    shutil.copy(GEOTIFF_DIR / "RGB.byte.tif", local / "locked.tif")
    for name in ("locked.jpg", "locked.tif"):
        (local / name).chmod(0)
    res = _job(["--archive", str(local), "--db", str(tmp_path / "db-local"), "--model", str(tiny_model)], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    done = _summary(res)
    assert (done["files"], done["embedded"], done["failed"]) == (4, 2, 2), done
    table = tiles.connect(tmp_path / "db-local").open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE))
    messages = {r[tiles.URI].rsplit("/", 1)[1]: r[B.MESSAGE].lower() for r in table.to_arrow().to_pylist()}
    assert set(messages) == {"locked.jpg", "locked.tif"}
    assert all("denied" in m for m in messages.values()), messages
