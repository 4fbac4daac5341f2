"""Chips read many at a time (issue 26): ``reads.read_many`` and the plan stage's prefetch, against a real S3 server;
objects of any name read as themselves.

Each object's bytes come back whole and in order through obstore (when installed) and through pyarrow; an object
over the bound and a missing one are reported as every other read reports them; the plan stage carries exactly
the objects' bytes, and records a chip gone since the listing, or every chip under wrong credentials, as one GET would.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from infra.local_stack import environment
from rsclip.errors import InvalidInput, LimitExceeded, NotFound
from rsclip.geo import raster
from rsclip.geo.images import decode_image
from rsclip.ingest import batch as B, listing, planning, reading
from rsclip.model.preprocess import ImagePreprocess, prepare_image
from rsclip.runtime import reads, storage
from rsclip.table import tiles
from tests.helpers import GEOTIFF_DIR

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


# Object names are not URLs: each of these characters is part of a name (a reader that parsed the URI as a URL
# cut "a#b.jpg" and "a?b.jpg" to "a" and read another object or none; "\t" and "\n" were dropped).
ODD_NAMES = ["a b.jpg", "a%20b.jpg", "a+b.jpg", "a#b.jpg", "a?b.jpg", "ü-中 😀.jpg", "pct%zz.jpg",
             "semi;colon&=.jpg", "quote'\".jpg", "tab\tx.jpg", "line\nbreak.jpg"]


def test_objects_of_any_name_are_listed_read_and_decoded_as_themselves(backend, s3_prefix, rsicd_files):
    """Each odd name holds another chip, and ``odd/a`` a decoy (what "a#b.jpg" and "a?b.jpg" were cut to): the
    listing, every reader and the plan and read stages give each name its own chip."""
    root = f"{s3_prefix}/odd"
    files = dict(zip(ODD_NAMES, rsicd_files[10:]))
    for name, f in files.items():
        storage.write_bytes(f"{root}/{name}", f.read_bytes())
    storage.write_bytes(f"{root}/a", b"a decoy: not a chip")
    listed = listing.list_archive(root)
    assert sorted(f.uri for f in listed) == sorted(f"{root}/{name}" for name in ODD_NAMES)
    uris = [f.uri for f in listed]
    want = [files[u[len(root) + 1:]].read_bytes() for u in uris]
    assert reads.read_many(uris, in_flight=4) == want
    assert [storage.read_bytes(u) for u in uris] == want
    batch = {tiles.URI: np.array(uris, dtype=object), B.SIZE: np.array([f.size for f in listed])}
    read = reading.read_tiles(planning.plan_files(batch, vars(raster.RasterOptions())), vars(ImagePreprocess()))
    assert list(read[B.STATUS]) == [B.READY] * len(uris), list(read[B.MESSAGE])
    for pixels, data in zip(read[B.PIXELS], want):
        assert np.array_equal(pixels, prepare_image(decode_image(data, "x.jpg"), ImagePreprocess()))


def test_rasters_of_odd_names_open_through_gdal_and_one_holding_a_question_mark_is_named(s3_prefix):
    tif = (GEOTIFF_DIR / "RGB.byte.tif").read_bytes()
    for name in ("scene #1.tif", "a%20b+c ü.tif", "tab\tx.tif"):
        storage.write_bytes(f"{s3_prefix}/rasters/{name}", tif)
        with raster.open_raster(f"{s3_prefix}/rasters/{name}") as src:
            assert (src.width, src.height) == (791, 718)
    uri = f"{s3_prefix}/rasters/a?b.tif"
    storage.write_bytes(uri, tif)
    with pytest.raises(InvalidInput, match=r"a\?b\.tif: GDAL cannot open an object whose name holds '\?'"), \
            raster.open_raster(uri):
        pass
