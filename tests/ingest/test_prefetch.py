"""Chips read many at a time (issue 26): ``reads.read_many`` and the plan stage's prefetch, against a real S3 server.

Each object's bytes come back whole and in order through obstore (when installed) and through pyarrow; an object
over the bound and a missing one are reported as every other read reports them; the plan stage carries exactly
the objects' bytes, and records a chip gone since the listing, or every chip under wrong credentials, as one GET would.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from infra.local_stack import environment
from rsclip.errors import LimitExceeded, NotFound
from rsclip.geo import raster
from rsclip.ingest import batch as B, planning
from rsclip.runtime import reads, storage
from rsclip.table import tiles

pytestmark = pytest.mark.slow  # the session's S3 server

BACKENDS = ("obstore", "pyarrow")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Reads through obstore (skipped when it is not installed) or, with obstore made unimportable, pyarrow."""
    if request.param == "obstore":
        pytest.importorskip("obstore")
    else:
        monkeypatch.setitem(sys.modules, "obstore", None)  # `import obstore` raises ImportError
    return request.param


@pytest.fixture
def chips(s3, s3_prefix, rsicd_files):
    """Five real chips uploaded under a fresh prefix: ``[(uri, bytes)]``."""
    out = []
    for f in rsicd_files[:5]:
        uri = f"{s3_prefix}/{f.name}"
        storage.write_bytes(uri, f.read_bytes())
        out.append((uri, f.read_bytes()))
    return out


def test_read_many_returns_each_objects_bytes_in_order(backend, chips, rsicd_files):
    uris = [u for u, _ in chips] + [str(rsicd_files[5])]
    got = reads.read_many(uris, max_bytes=1 << 20, in_flight=3)
    assert got == [d for _, d in chips] + [rsicd_files[5].read_bytes()]


def test_read_many_refuses_an_object_over_the_bound_and_names_a_missing_one(backend, chips):
    (uri, data), (other, _) = chips[:2]
    gone = f"{uri}.gone.jpg"
    over, missing, whole = reads.read_many([uri, gone, other], max_bytes=len(data) - 1)
    assert isinstance(over, LimitExceeded) and uri in str(over)
    assert isinstance(missing, NotFound) and gone in str(missing)
    assert isinstance(whole, (bytes, LimitExceeded))  # the other chip: bytes when it fits
    assert reads.read_many([uri], max_bytes=len(data)) == [data]  # exactly at the bound is allowed


def test_wrong_credentials_give_the_plan_stage_the_errors_of_one_get(backend, s3, chips):
    """The prefetch fails on every chip; the plan stage then reports what one GET per chip reports."""
    listed = {tiles.URI: np.array([u for u, _ in chips], dtype=object), B.SIZE: np.array([len(d) for _, d in chips])}
    with environment({**s3.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}):
        assert all(isinstance(e, Exception) for e in reads.read_many(list(listed[tiles.URI])))
        planned = planning.plan_files(listed, vars(raster.RasterOptions()))
        alone = [planning.plan_file(u, len(d), raster.RasterOptions())[0][B.MESSAGE] for u, d in chips]
    assert list(planned[B.STATUS]) == [B.ERROR] * len(chips)
    assert list(planned[B.MESSAGE]) == alone and all(m.startswith(u) for m, (u, _) in zip(alone, chips))


def test_the_plan_stage_carries_each_chips_bytes_and_records_one_gone_since_listing(backend, chips):
    gone = f"{chips[0][0]}.gone.jpg"
    uris = [u for u, _ in chips] + [gone]
    listed = {tiles.URI: np.array(uris, dtype=object),
              B.SIZE: np.array([len(d) for _, d in chips] + [1000])}
    planned = planning.plan_files(listed, vars(raster.RasterOptions()))
    by_uri = {str(u): i for i, u in enumerate(planned[tiles.URI])}
    for uri, data in chips:
        i = by_uri[uri]
        assert planned[B.STATUS][i] == B.TODO and bytes(planned[B.DATA][i]) == data
        assert (planned[tiles.WIDTH][i], planned[tiles.HEIGHT][i]) == (150, 150)
    i = by_uri[gone]
    assert planned[B.STATUS][i] == B.ERROR and planned[B.STAGE][i] == B.STAGE_PLAN
    (alone,) = planning.plan_file(gone, 1000, raster.RasterOptions())  # one GET, no prefetch: the same error
    assert str(planned[B.MESSAGE][i]).startswith(gone) and planned[B.MESSAGE][i] == alone[B.MESSAGE]
