"""STAC input for the embedding job (issue 17): static catalogs, ItemCollections and newline-delimited items
(local and in SeaweedFS), a STAC API served by a real server (rustac), stacked single-band assets, HTTP(S)
COGs read by range, bad input, and a killed STAC job rerun.

The catalogs hold the real GeoTIFFs of ../shared/data (tests/helpers/stac.py says which dates are real).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rsclip.geo import raster, stacked
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.errors import InvalidInput, StoreUnavailable, UnsafeInput
from rsclip.ingest import batch as B, planning, stac
from rsclip.ingest.config import EmbedConfig
from rsclip.ingest.pipeline import run_embedding
from tests.helpers import stac as H
from tests.helpers import GEOTIFF_DIR, ROOT, require_shared_data
from tests.helpers.http import RangeServer
from tests.helpers.job_logs import kill_at

OPTIONS = raster.RasterOptions(tile_size=160, max_chip=64)
JOB_FLAGS = ["--tile-size", "160", "--max-chip", "64", "--batch-size", "8", "--cpus-per-actor", "0.5",
             "--read-cpus", "0.5", "--read-tasks", "1", "--index", "never"]
RUSTAC = Path(sys.executable).with_name("rustac")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    require_shared_data()
    return H.build_scenes(tmp_path_factory.mktemp("stac") / "scenes")


def _facts(sources) -> dict[str, tuple]:
    return {s.item_id: (s.datetime, s.cloud_cover, bool(s.problem)) for s in sources}


def _by_search(options: stac.StacOptions) -> set[str]:
    """The item ids a search names, decided from tests/stac_helpers.ITEMS (brute force)."""
    span = options.span
    keep = set()
    for item, (collection, when, cloud) in H.ITEMS.items():
        if options.collections and collection not in options.collections:
            continue
        if span is not None and not span.contains([int(when.timestamp() * 1_000_000)])[0]:
            continue
        if options.max_cloud is not None and cloud > options.max_cloud:
            continue
        if options.query and json.loads(options.query)["platform"]["eq"] != collection:  # platform = collection
            continue
        keep.add(item)
    return keep


SEARCHES = [dict(), dict(datetime="2020/2021-04"), dict(max_cloud=5), dict(collections=("naip",)),
            dict(datetime="2021-01-01/..", max_cloud=20), dict(query='{"platform": {"eq": "landsat"}}')]


def test_catalogs_item_collections_and_item_lines_list_the_same_sources(scenes, tmp_path):
    catalog = H.write_catalog(tmp_path / "catalog", scenes)
    items = H.build_items(scenes)
    collection = H.write_item_collection(tmp_path / "items.json", items)
    lines = tmp_path / "items.ndjson"
    lines.write_text("\n".join(json.dumps(i.to_dict()) for i in items) + "\n{not json\n")
    # the collection and the lines lie beside, not above, the scenes' folder: their local assets are allowed
    listed = {name: stac.list_items(stac.StacOptions(stac=str(path), allow_asset_schemes=("file",)))
              for name, path in (("catalog", catalog), ("collection", collection), ("lines", lines))}
    want = {i: (int(w.timestamp() * 1_000_000), c, i == "landsat-bands") for i, (_, w, c) in H.ITEMS.items()}
    for name, sources in listed.items():
        facts = {k: v for k, v in _facts(sources).items() if k}
        assert facts == want, name
        assert all(s.size == -1 and (s.version or s.problem) for s in sources)
    broken = [s for s in listed["lines"] if not s.item_id]
    assert len(broken) == 1 and "not JSON" in broken[0].problem and broken[0].uri.endswith("#L6")
    bands = next(s for s in listed["catalog"] if s.item_id == "landsat-bands")
    assert "no asset 'visual'" in bands.problem and bands.uri.endswith("landsat-bands.json")
    assert [s.version for s in listed["catalog"]] == [s.version for s in stac.list_items(stac.StacOptions(
        stac=str(catalog)))]  # a rerun lists the same versions
    for search in SEARCHES:
        options = stac.StacOptions(stac=str(collection), allow_asset_schemes=("file",), **search)
        assert {s.item_id for s in stac.list_items(options)} == _by_search(options), search
    assert len(stac.list_items(stac.StacOptions(stac=str(catalog), limit=2))) == 2


def test_bad_stac_input_is_refused_with_a_clear_error(scenes, tmp_path):
    not_stac = tmp_path / "geo.json"
    not_stac.write_text(json.dumps({"type": "Topology", "objects": {}}))
    with pytest.raises(InvalidInput, match="not a STAC catalog"):
        stac.list_items(stac.StacOptions(stac=str(not_stac)))
    (tmp_path / "text.json").write_text("<html>hello</html>")
    with pytest.raises(InvalidInput, match="not JSON"):
        stac.list_items(stac.StacOptions(stac=str(tmp_path / "text.json")))
    for bad in (dict(datetime="2020-13-01/2021"), dict(datetime="../.."), dict(bbox=(10, 0, 0, 10)),
                dict(max_cloud=150), dict(limit=0), dict(assets=("red", "green")), dict(query="{"),
                dict(query='{"eo:cloud_cover": {"like": 3}}')):
        with pytest.raises(InvalidInput):
            stac.StacOptions(stac=str(not_stac), **bad)
    with pytest.raises(InvalidInput, match="either --archive or --stac"):
        EmbedConfig(db=str(tmp_path / "db"))
    with pytest.raises(InvalidInput, match="either --archive or --stac"):
        EmbedConfig(db="d", archive="a", catalog=stac.StacOptions(stac="x.json"))


def test_an_unreachable_stac_api_fails_before_any_cluster_work(tmp_path, tiny_model, monkeypatch):
    import ray

    monkeypatch.setenv(storage.ALLOW_PRIVATE_HTTP, "1")  # a loopback API is fetched only when the operator says so

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = EmbedConfig(db=str(tmp_path / "db"), model=str(tiny_model),
                         catalog=stac.StacOptions(stac=f"http://127.0.0.1:{port}/"))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"STAC API http://127.0.0.1:{port}/"):
        run_embedding(config)
    assert time.monotonic() - started < 60 and not ray.is_initialized()
    assert not (tmp_path / "db").exists()


def test_three_single_band_assets_are_read_as_rgb_on_the_finest_grid(scenes, tmp_path):
    collection = H.write_item_collection(tmp_path / "items.json", H.build_items(scenes))
    sources = stac.list_items(stac.StacOptions(stac=str(collection), assets=("red", "green", "blue"),
                                               allow_asset_schemes=("file",)))
    (source,) = [s for s in sources if not s.problem]
    assert {s.item_id for s in sources if "no asset 'red'" in s.problem} == set(H.ITEMS) - {"landsat-bands"}
    assert stacked.is_stack(source.uri) and len(stacked.stack_parts(source.uri)) == 3
    rows = planning.plan_file(source.uri, source.size, OPTIONS, source.version, source)
    original = planning.plan_file(str(GEOTIFF_DIR / H.LANDSAT), 1, OPTIONS)
    assert [r[tiles.ID] for r in rows] != [r[tiles.ID] for r in original]
    assert [tuple(r[c] for c in tiles.WINDOW_COLUMNS) for r in rows] == [
        tuple(r[c] for c in tiles.WINDOW_COLUMNS) for r in original]
    assert [r[tiles.FOOTPRINT] for r in rows] == [r[tiles.FOOTPRINT] for r in original]
    assert {r[tiles.ITEM_ID] for r in rows} == {"landsat-bands"}
    with raster.open_raster(source.uri) as src, raster.open_raster(str(GEOTIFF_DIR / H.LANDSAT)) as ref:
        assert (src.width, src.height, src.count) == (ref.width, ref.height, 3)
        scene, ref_scene = raster.describe_scene(src, OPTIONS), raster.describe_scene(ref, OPTIONS)
        for row in rows[:6]:
            window = [row[c] for c in tiles.WINDOW_COLUMNS]
            (got, nodata), (want, want_nodata) = raster.read_tile(src, window, scene), raster.read_tile(
                ref, window, ref_scene)
            assert np.array_equal(got[..., :2], want[..., :2])  # red and green: the original bands
            assert np.abs(got[..., 2].astype(int) - want[..., 2]).mean() < 12  # blue: from 600 m pixels
            assert abs(nodata - want_nodata) < 0.02
        assert raster.read_scaled(src, scene, (32, 32)).shape == (32, 32, 3)
    for bad in ("stack:a.tif", f"stack:{stacked.stack_uri(['a.tif', 'b.tif'])}", "stack:a.tif||b.tif"):
        with pytest.raises(InvalidInput):
            stacked.stack_parts(bad)


def test_http_cogs_are_read_by_range_through_the_hardened_path(scenes, tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    for item in ("naip-2020", "landsat-a"):
        shutil.copy(scenes[item]["visual"], folder / f"{item}.tif")
    (tmp_path / "secret.tif").write_bytes(b"II*\x00secret")
    redirects = {"/moved.tif": f"file://{tmp_path / 'secret.tif'}", "/other.tif": "/landsat-a.tif",
                 "/meta.tif": "http://169.254.169.254/latest/meta-data/a.tif"}
    with RangeServer(folder, redirects) as server:
        items = H.build_items({k: scenes[k] for k in ("naip-2020", "landsat-a")},
                              href=lambda path: f"{server.url}/{path.name}")
        sources = stac.list_items(stac.StacOptions(stac=str(H.write_item_collection(tmp_path / "i.json", items))))
        assert {s.uri for s in sources} == {f"{server.url}/naip-2020.tif", f"{server.url}/landsat-a.tif"}
        naip = next(s for s in sources if s.item_id == "naip-2020")
        rows = planning.plan_file(naip.uri, naip.size, OPTIONS, naip.version, naip)
        local = planning.plan_file(str(scenes["naip-2020"]["visual"]), 1, OPTIONS)
        assert [r[tiles.FOOTPRINT] for r in rows] == [r[tiles.FOOTPRINT] for r in local]
        with raster.open_raster(naip.uri) as src, raster.open_raster(str(scenes["naip-2020"]["visual"])) as ref:
            scene = raster.describe_scene(src, OPTIONS)
            for row in rows[:3]:
                window = [row[c] for c in tiles.WINDOW_COLUMNS]
                assert np.array_equal(raster.read_window(src, window, scene), raster.read_window(
                    ref, window, raster.describe_scene(ref, OPTIONS)))
        size = (folder / "naip-2020.tif").stat().st_size
        assert 0 < server.sent["/naip-2020.tif"] < size  # range reads: never the whole file
        with raster.open_raster(f"{server.url}/other.tif") as src:  # a redirect to HTTP is followed
            assert src.width == 791
        with pytest.raises(InvalidInput, match="disabled|not a readable raster"):
            with raster.open_raster(f"{server.url}/moved.tif"):
                pass
        assert "/moved.tif" not in server.sent
        with pytest.raises(UnsafeInput, match="addresses are never read"):  # each redirect hop is checked
            with raster.open_raster(f"{server.url}/meta.tif"):
                pass
    for bad in ("ftp://example.org/a.tif", "http://exa mple.org/a.tif", "https:///a.tif", "http://x.org/a.vrt",
                "http://169.254.169.254/latest/a.tif", "http://metadata.google.internal/a.tif"):
        with pytest.raises(InvalidInput):
            with raster.open_raster(bad):
                pass


# ---- the job on SeaweedFS and Ray ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_catalog(s3, scenes, tmp_path_factory):
    """The static catalog in SeaweedFS (its assets beside its items, relative hrefs): its catalog.json URI."""
    folder = tmp_path_factory.mktemp("cat")
    H.write_catalog(folder, scenes)
    return H.upload_tree(s3, folder, f"catalog-{folder.name}") + "/catalog.json"


def _expected_tiles(sources) -> dict[str, dict]:
    """Tile rows the job must write for ``sources`` (planned as the job plans them), by id."""
    out = {}
    for source in sources:
        if not source.problem:
            for row in planning.plan_file(source.uri, source.size, OPTIONS, source.version, source):
                out[row[tiles.ID]] = row
    return out


def test_a_static_catalog_on_s3_is_embedded_with_time_and_error_rows(ray_driver, s3_catalog, s3_prefix, tiny_model):
    config = EmbedConfig(db=f"{s3_prefix}/db", model=str(tiny_model), raster=OPTIONS, batch_size=8, commit_rows=16,
                         cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1, index="always",
                         catalog=stac.StacOptions(stac=s3_catalog))
    sources = stac.list_items(config.catalog)
    assert all(s.uri.startswith("s3://") for s in sources)
    want = _expected_tiles(sources)
    first = run_embedding(config)
    assert (first.files, first.failed) == (5, 1) and first.embedded + first.nodata == len(want), first.to_text()
    rows = tiles.open_table(config.db).to_pandas()
    assert set(rows[tiles.ID]) <= set(want) and len(rows) == first.embedded
    by_item = {s.item_id: s for s in sources}
    for row in rows.itertuples():
        source = by_item[row.item_id]
        assert row.uri == source.uri and int(row.datetime.timestamp() * 1_000_000) == source.datetime
        assert row.cloud_cover == source.cloud_cover and 0.0 <= row.nodata_fraction < 1.0
    landsat = rows[rows[tiles.ITEM_ID] == "landsat-a"]
    assert (landsat[tiles.NODATA_FRACTION] > 0).any()  # the clip's black collar, measured per window
    errors = tiles.connect(config.db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE)).to_pandas()
    assert len(errors) == 1 and "no asset 'visual'" in errors[B.MESSAGE].iloc[0]
    assert errors[tiles.URI].iloc[0].endswith("landsat-bands/landsat-bands.json")
    again = run_embedding(config)
    assert again.embedded == 0 and again.skipped_present == first.embedded and again.failed == 1
    import rsclip

    hits = rsclip.query(config.db, np.stack(rows[tiles.VECTOR].to_numpy())[0], k=100, date="2020", max_cloud=1)
    assert set(hits[tiles.ITEM_ID]) == {"naip-2020"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stac_api(s3, scenes, s3_prefix, tmp_path, monkeypatch):
    """A STAC API (rustac's server, in-memory backend) on 127.0.0.1 holding the items, their assets in S3."""
    monkeypatch.setenv(storage.ALLOW_PRIVATE_HTTP, "1")  # a loopback API is fetched only when the operator says so
    if not RUSTAC.exists():
        pytest.fail(f"rustac is missing ({RUSTAC}): pip install -e '.[test]'")
    key = s3_prefix.split("/", 3)[3]
    client = s3.client()
    for item, assets in scenes.items():
        for path in assets.values():
            client.upload_file(str(path), "rsclip-test", f"{key}/assets/{path.name}")
    items = H.build_items(scenes, href=lambda path: f"{s3_prefix}/assets/{path.name}")
    collection = H.write_item_collection(tmp_path / "items.json", items)
    port = _free_port()
    server = subprocess.Popen([str(RUSTAC), "serve", str(collection), "--create-collections", "--addr",
                               f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url, collection
    finally:
        server.terminate()  # only the server we started
        server.wait(30)


def test_a_stac_api_search_lists_and_embeds_what_the_search_names(stac_api, ray_driver, s3_prefix, tiny_model):
    url, collection = stac_api
    for search in SEARCHES:
        options = stac.StacOptions(stac=url, allow_asset_schemes=("s3",), **search)  # the API's assets are in S3
        listed = stac.list_items(options)
        assert {s.item_id for s in listed} == _by_search(options), search
        local = stac.list_items(stac.StacOptions(stac=str(collection), **search))
        def readable(sources):
            return {(s.uri, s.version, s.datetime, s.cloud_cover) for s in sources if not s.problem}

        assert readable(listed) == readable(local)
        assert {s.item_id for s in listed if s.problem} == {s.item_id for s in local if s.problem}
        assert all(s.uri.startswith(url) for s in listed if s.problem)  # error rows name the item's API href
    options = stac.StacOptions(stac=url, collections=("landsat",), assets=("red", "green", "blue"),
                               allow_asset_schemes=("s3",))
    config = EmbedConfig(db=f"{s3_prefix}/db", model=str(tiny_model), raster=OPTIONS, batch_size=8, cpus_per_actor=0.5,
                         read_cpus=0.5, read_tasks=1, index="never", catalog=options)
    done = run_embedding(config)
    want = _expected_tiles(stac.list_items(options))
    assert done.files == 3 and done.failed == 2 and done.embedded + done.nodata == len(want), done.to_text()
    rows = tiles.open_table(config.db).to_pandas()
    assert set(rows[tiles.ITEM_ID]) == {"landsat-bands"} and all(stacked.is_stack(u) for u in rows[tiles.URI])


def test_a_killed_stac_job_rerun_gives_the_same_rows(ray_head, s3_catalog, s3_prefix, tiny_model):
    db = f"{s3_prefix}/db"
    args = ["jobs/embed_archive.py", "--stac", s3_catalog, "--db", db, "--model", str(tiny_model), *JOB_FLAGS,
            "--commit-rows", "8"]
    env = {**ray_head.process_env(), "RAY_ADDRESS": ray_head.address}
    # killed on the job's first commit, not after a timer
    assert kill_at([sys.executable, *args], env=env, cwd=ROOT, event=b"committed") == -signal.SIGKILL
    at_kill = tiles.open_table(db).count_rows()
    res = ray_head.submit(["python", *args], working_dir=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = tiles.open_table(db).to_pandas()
    want = _expected_tiles(stac.list_items(stac.StacOptions(stac=s3_catalog)))
    assert 0 < at_kill < len(rows) and len(rows) == len(set(rows[tiles.ID])) and set(rows[tiles.ID]) <= set(want)
    assert f"{len(rows) - at_kill} embedded, {at_kill} skipped as present" in res.stdout, res.stdout[-2000:]
    assert rows[tiles.DATETIME].notna().all() and rows[tiles.ITEM_ID].notna().all()
