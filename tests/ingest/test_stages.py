"""rsclip.ingest (planning, reading, embedder, writer, pipeline): the embedder without Ray, the bad-input catalogue, reruns, the errors table."""

from __future__ import annotations

import io
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsclip.geo import raster
from rsclip.table import tiles
from rsclip.geo.windows import grid_windows
from rsclip.errors import RsclipError
from rsclip.ingest import batch as B, listing, pipeline, planning, reading, sources, writer
from rsclip.ingest.embedder import ImageEmbedder, model_spec
from rsclip.ingest.config import EmbedConfig
from rsclip.ingest.pipeline import run_embedding
from rsclip.geo.images import read_image
from rsclip.model.clip import load_model
from rsclip.testing import build_tiny_clip
from tests.helpers import BUCKET, GEOTIFF_DIR, job_windows, spread_files

CHIPS = 12


def png_bytes(width: int, height: int, payload: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb when large)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def bad_files(rsicd_files) -> dict[str, tuple[bytes, str, str]]:
    """name: (content, stage, message part) for the bad-input catalogue."""
    jpeg = rsicd_files[0].read_bytes()
    one = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(one, format="PNG")
    complex_tif = io.BytesIO()
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=16, height=16, count=1, dtype="complex64", crs="EPSG:4326",
                      transform=from_origin(0, 0, 1, 1)) as dst:
            dst.write(np.ones((1, 16, 16), np.complex64))
        complex_tif.write(mem.read())
    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs="EPSG:32618", nodata=0,
                      transform=from_origin(500000, 4500000, 30, 30)) as dst:
            dst.write(np.zeros((3, 64, 64), np.uint8))
        nodata_tif = mem.read()
    return {
        "bad/zero.jpg": (b"", B.STAGE_PLAN, "empty file"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], B.STAGE_READ, "truncated"),
        "bad/text.jpg": (b"this is not an image\n" * 10, B.STAGE_PLAN, "not a readable image"),
        "bad/one_pixel.png": (one.getvalue(), B.STAGE_PLAN, "too small"),
        "bad/bomb.png": (png_bytes(100_000, 100_000), B.STAGE_PLAN, "decompression bomb"),
        "bad/broken.tif": ((GEOTIFF_DIR / "RGB.byte.tif").read_bytes()[:400], B.STAGE_PLAN,
                           "not a readable raster"),
        "bad/all_nodata.tif": (nodata_tif, B.STAGE_PLAN, "all pixels are nodata"),
        "bad/complex.tif": (complex_tif.getvalue(), B.STAGE_PLAN, "unsupported data type"),
    }


def test_image_embedder_works_on_a_plain_batch_without_ray(tiny_model, rsicd_files):
    """The mapper: read batch in, vectors equal to the encoder's out; rows not ready pass through as zeros."""
    files = rsicd_files[:5]
    rows = [r for f in files for r in planning.plan_file(str(f), f.stat().st_size, raster.RasterOptions())]
    rows.append(B.error_row("x.jpg", B.STAGE_PLAN, "x.jpg: broken"))
    _, preprocess = model_spec(str(tiny_model))
    batch = reading.read_tiles(B.rows_to_batch(rows, B.PLAN_COLUMNS), vars(preprocess))
    assert list(batch[B.STATUS]) == [B.READY] * 5 + [B.ERROR]
    # the decode stage already resized to the model's shortest side: 150 px chips arrive at 224 x 224
    assert set(batch[B.PIXELS_HEIGHT][:5]) == {224}
    out = ImageEmbedder(str(tiny_model), torch_threads=1)(batch)
    assert B.PIXELS not in out
    assert list(out[B.STATUS]) == [B.EMBEDDED] * 5 + [B.ERROR]
    want = load_model(str(tiny_model)).encode_images([read_image(f) for f in files])
    np.testing.assert_allclose(out[tiles.VECTOR][:5], want, atol=2e-5)
    assert not out[tiles.VECTOR][5].any()
    np.testing.assert_allclose(np.linalg.norm(out[tiles.VECTOR][:5], axis=1), 1.0, atol=1e-5)
    # the pipeline's read stage: the same rows, decoded two at a time
    slices = list(reading.read_slices(B.rows_to_batch(rows, B.PLAN_COLUMNS), vars(preprocess), rows=2))
    assert [len(s[B.STATUS]) for s in slices] == [2, 2, 2]
    assert [u for s in slices for u in s[tiles.URI]] == list(batch[tiles.URI])
    assert all((a == b).all() for a, b in zip([p for s in slices for p in s[B.PIXELS]], batch[B.PIXELS]))


def test_bad_inputs_fail_at_the_right_stage_without_ray(tmp_path, rsicd_files, tiny_model):
    catalogue = bad_files(rsicd_files)
    for name, (content, _, _) in catalogue.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    files = listing.list_archive(str(tmp_path))
    assert len(files) == len(catalogue)
    batch = planning.plan_files(
        {tiles.URI: np.array([f.uri for f in files], object), B.SIZE: np.array([f.size for f in files])},
        options=vars(raster.RasterOptions()),
    )
    _, preprocess = model_spec(str(tiny_model))
    batch = reading.read_tiles(batch, vars(preprocess))
    seen = {}
    for uri, status, stage, message in zip(batch[tiles.URI], batch[B.STATUS], batch[B.STAGE],
                                           batch[B.MESSAGE]):
        assert status == B.ERROR, (uri, message)
        seen[Path(uri).relative_to(tmp_path).as_posix()] = (stage, message)
    for name, (_, stage, part) in catalogue.items():
        assert seen[name][0] == stage, (name, seen[name])
        assert part in seen[name][1] and name in seen[name][1], (name, seen[name])


def nan_clip(path: Path) -> Path:
    """A tiny CLIP export that loads fine but whose image projection is NaN: a model broken for real."""
    from safetensors.numpy import load_file, save_file

    build_tiny_clip(path)
    weights = load_file(path / "model.safetensors")
    weights["visual_projection.weight"][:] = np.nan
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_an_embedder_that_cannot_embed_marks_its_rows_instead_of_dying(tmp_path, tiny_model, rsicd_files):
    """Weights changed since the job recorded them, or a model giving NaN: every ready row is an embed error."""
    from rsclip.model.sources import model_identity

    rows = [r for f in rsicd_files[:3] for r in planning.plan_file(str(f), f.stat().st_size, raster.RasterOptions())]
    _, preprocess = model_spec(str(tiny_model))
    batch = reading.read_tiles(B.rows_to_batch(rows, B.PLAN_COLUMNS), vars(preprocess))
    recorded = model_identity(tiny_model).weights_sha256
    assert list(ImageEmbedder(str(tiny_model), dim=32, weights_sha256=recorded)(batch)[B.STATUS]) == [B.EMBEDDED] * 3
    cases = {"changed since the job started": ImageEmbedder(str(tiny_model), dim=32, weights_sha256="0" * 64),
             "non-finite embedding": ImageEmbedder(str(nan_clip(tmp_path / "nan")), dim=32)}
    for part, embedder in cases.items():
        out = embedder(batch)
        assert list(out[B.STATUS]) == [B.ERROR] * 3 and set(out[B.STAGE]) == {B.STAGE_EMBED}
        assert all(part in m and str(f) in m for m, f in zip(out[B.MESSAGE], rsicd_files)), out[B.MESSAGE]
        assert not out[tiles.VECTOR].any()


def test_batch_size_defaults_by_device_and_an_explicit_one_wins():
    cpu = EmbedConfig(archive="a", db="d")
    gpu = EmbedConfig(archive="a", db="d", gpus_per_actor=0.5)
    assert (cpu.batch_size, gpu.batch_size) == (64, 256)
    assert EmbedConfig(archive="a", db="d", gpus_per_actor=1, batch_size=32).batch_size == 32
    assert EmbedConfig.from_dict(gpu.to_dict()) == gpu
    with pytest.raises(ValueError, match="batch size"):
        EmbedConfig(archive="a", db="d", batch_size=0)
    with pytest.raises(ValueError, match="max failed batches"):
        EmbedConfig(archive="a", db="d", max_failed_batches=0)


# ---- the pipeline on the session Ray head (this process is the driver) ------------------------------


@pytest.fixture(scope="module")
def mixed_archive(s3, rsicd_files, tmp_path_factory):
    """Real chips, one real GeoTIFF (gridded), and the bad-input catalogue, in SeaweedFS."""
    prefix = "mixed-" + tmp_path_factory.mktemp("m").name
    client = s3.client()
    for f in rsicd_files[:CHIPS]:
        client.upload_file(str(f), BUCKET, f"{prefix}/chips/{f.name}")
    client.upload_file(str(GEOTIFF_DIR / "2020.tif"), BUCKET, f"{prefix}/scenes/2020.tif")
    for name, (content, _, _) in bad_files(rsicd_files).items():
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=content)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/notes.txt", Body=b"not an image suffix: ignored")
    return f"s3://{BUCKET}/{prefix}"


def test_pipeline_writes_tiles_records_errors_and_reruns_exactly_once(ray_driver, mixed_archive, s3_prefix,
                                                                      tiny_model, rsicd_files, monkeypatch):
    db = f"{s3_prefix}/db"
    opts = raster.RasterOptions(tile_size=224, max_chip=300)
    config = EmbedConfig(archive=mixed_archive, db=db, model=str(tiny_model), raster=opts, batch_size=8,
                         commit_rows=8, cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1, index="always",
                         files_per_task=2)
    scene_tiles = len(job_windows(GEOTIFF_DIR / "2020.tif", 224))  # 697 x 377 px, windows on the CRS's grid
    catalogue = bad_files(rsicd_files)

    # the first run as a large archive's: tasks of more files than --files-per-task, planned two at a time
    monkeypatch.setattr(pipeline, "MAX_READ_TASKS", 2)
    first = run_embedding(config)
    assert pipeline.files_per_task(config, first.files) > config.files_per_task
    monkeypatch.undo()  # the rerun's tasks: two files each
    assert first.files == CHIPS + 1 + len(catalogue)
    assert first.embedded == CHIPS + scene_tiles and first.skipped_present == 0
    assert first.failed == len(catalogue) and first.nodata == 0
    table = tiles.open_table(db)
    rows = table.to_arrow()
    assert rows.num_rows == CHIPS + scene_tiles
    assert len(set(rows.column(tiles.ID).to_pylist())) == rows.num_rows
    scene = [r for r in rows.to_pylist() if r[tiles.URI].endswith("2020.tif")]
    assert len(scene) == scene_tiles and {r[tiles.CRS] for r in scene} == {"EPSG:4326"}
    chips = [r for r in rows.to_pylist() if "/chips/" in r[tiles.URI]]
    assert all(r[tiles.LON_MIN] is None and r[tiles.CRS] is None for r in chips)
    assert {(r[tiles.WIDTH], r[tiles.HEIGHT]) for r in chips} == {(150, 150)}

    errors = tiles.connect(db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE)).to_arrow().to_pylist()
    by_name = {r[tiles.URI].split("/", 4)[-1]: r for r in errors}
    assert set(by_name) == set(catalogue)
    for name, (_, stage, part) in catalogue.items():
        assert by_name[name][B.STAGE] == stage and part in by_name[name][B.MESSAGE]
        assert by_name[name][writer.ERROR_TIME] is not None

    # a rerun embeds nothing, skips everything present, and does not duplicate error rows
    second = run_embedding(config)
    assert second.embedded == 0 and second.skipped_present == CHIPS + scene_tiles
    assert second.failed == len(catalogue)
    table.checkout_latest()
    assert table.count_rows() == CHIPS + scene_tiles
    errors_table = tiles.connect(db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE))
    assert errors_table.count_rows() == len(catalogue)


def test_other_model_is_refused_and_empty_archive_says_zero_files(ray_driver, s3, s3_prefix, tiny_model,
                                                                  tmp_path, rsicd_files):
    db = f"{s3_prefix}/db"
    client = s3.client()
    key = s3_prefix.split("/", 3)[3]
    client.upload_file(str(rsicd_files[0]), BUCKET, f"{key}/one/{rsicd_files[0].name}")
    base = dict(db=db, cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1, index="never")
    done = run_embedding(EmbedConfig(archive=f"{s3_prefix}/one", model=str(tiny_model), **base))
    assert done.embedded == 1 and done.table_rows == 1
    other = build_tiny_clip(tmp_path / "other-clip", seed=1)
    with pytest.raises(RsclipError, match="refusing to add embeddings"):
        run_embedding(EmbedConfig(archive=f"{s3_prefix}/one", model=str(other), **base))
    # the same folder re-exported in place (same model string, other weights) is refused as well
    folder = build_tiny_clip(tmp_path / "clip", seed=2)
    again = dict(base, db=f"{s3_prefix}/db2")
    assert run_embedding(EmbedConfig(archive=f"{s3_prefix}/one", model=str(folder), **again)).embedded == 1
    build_tiny_clip(folder, seed=3)
    with pytest.raises(RsclipError, match="refusing to add embeddings of other weights"):
        run_embedding(EmbedConfig(archive=f"{s3_prefix}/one", model=str(folder), **again))
    empty = run_embedding(EmbedConfig(archive=f"{s3_prefix}/nothing-here", model=str(tiny_model), **base))
    assert empty.files == 0 and "0 files" in empty.to_text()
    with pytest.raises(RsclipError, match="archive folder not found"):
        run_embedding(EmbedConfig(archive=str(tmp_path / "missing"), model=str(tiny_model), **base))


def test_a_broken_model_stops_the_job_with_one_clear_error(ray_driver, s3, s3_prefix, tmp_path, rsicd_files):
    """A model that loads but embeds NaN: the job stops after --max-failed-batches batches instead of
    recording the rest of the archive as errors and reporting success."""
    files = spread_files(rsicd_files, 24)
    key = s3_prefix.split("/", 3)[3]
    client = s3.client()
    for f in files:
        client.upload_file(str(f), BUCKET, f"{key}/chips/{f.name}")
    db = f"{s3_prefix}/db"
    config = EmbedConfig(archive=f"{s3_prefix}/chips", db=db, model=str(nan_clip(tmp_path / "nan")), batch_size=4,
                         commit_rows=4, max_failed_batches=2, cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1,
                         index="never")
    with pytest.raises(writer.EmbeddingBroken, match="every tile of 2 consecutive batches.*non-finite embedding"):
        run_embedding(config)
    errors = tiles.connect(db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE)).count_rows()
    assert 0 < errors < len(files) and tiles.open_table(db).count_rows() == 0


def test_a_few_scenes_are_read_in_a_task_each_whatever_the_embedder_batch(ray_driver, tiny_model, tmp_path):
    """Four scenes with the GPU batch (256 tiles, more than the four hold): four planning/decoding tasks, one
    scene each as ``files_per_task`` asks, not one task for all (the read stage's batch, counted in tiles, once
    became Ray Data's count of files per fused task); every tile comes out once, in batches of at most 256."""
    archive = tmp_path / "scenes"
    archive.mkdir()
    for i in range(4):
        shutil.copy(GEOTIFF_DIR / "2020.tif", archive / f"scene-{i}.tif")
    config = EmbedConfig(archive=str(archive), db=str(tmp_path / "db"), model=str(tiny_model), batch_size=256,
                         cpus_per_actor=0.5, read_cpus=0.5, raster=raster.RasterOptions(tile_size=224))
    probed, model = pipeline._probe(config)
    listed = sources.list_sources(config, probed)
    assert pipeline.files_per_task(config, listed.files) == 1
    ds = pipeline.build_dataset(config, listed, 0, model)
    sizes = [len(b[B.STATUS]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert sum(sizes) == 4 * len(job_windows(GEOTIFF_DIR / "2020.tif", 224)) and max(sizes) <= 256
    tasks = re.search(r"MapBatches\(plan_files\)\S*: (\d+) tasks executed", ds.stats())
    assert tasks, ds.stats()
    assert int(tasks.group(1)) == 4, ds.stats()


def _raster_part(path: Path, width: int) -> bytes:
    """The first ``width`` columns of a GeoTIFF, georeferenced as in the original."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(path) as src, rasterio.MemoryFile() as mem:
        part = RioWindow(0, 0, width, src.height)
        profile = dict(src.profile, width=width, transform=src.window_transform(part))
        with mem.open(**profile) as dst:
            dst.write(src.read(window=part))
        return mem.read()


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_objects_rewritten_in_place_are_embedded_again_and_their_stale_tiles_removed(
        ray_driver, s3, s3_prefix, tiny_model, rsicd_files):
    key = s3_prefix.split("/", 3)[3]
    client = s3.client()
    put = lambda name, body: client.put_object(Bucket=BUCKET, Key=f"{key}/arch/{name}", Body=body)  # noqa: E731
    put("a.jpg", rsicd_files[0].read_bytes())
    put("b.jpg", rsicd_files[1].read_bytes())
    put("c.jpg", b"not an image yet")
    put("scene.tif", (GEOTIFF_DIR / "2020.tif").read_bytes())
    archive, db = f"{s3_prefix}/arch", f"{s3_prefix}/db"
    # cut on the scene-corner grid, as rsclip 0.1 cut, so that the legacy table made below is one it could write
    options = raster.RasterOptions(max_chip=300, grid="scene")
    config = EmbedConfig(archive=archive, db=db, model=str(tiny_model), raster=options,
                         batch_size=8, commit_rows=8, cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1, index="never")
    old_grid, new_grid = set(grid_windows(697, 377, 224)), set(grid_windows(450, 377, 224))
    first = run_embedding(config)
    assert (first.embedded, first.failed) == (2 + len(old_grid), 1)
    table = tiles.open_table(db)
    before = {r[tiles.ID]: r for r in table.to_arrow().to_pylist()}

    # rewritten in place: a (same size, other scene), b (smaller), c (now an image), the scene (narrower)
    put("a.jpg", rsicd_files[500].read_bytes())
    put("b.jpg", _jpeg(Image.open(rsicd_files[1]).crop((0, 0, 120, 100))))
    put("c.jpg", rsicd_files[2].read_bytes())
    put("scene.tif", _raster_part(GEOTIFF_DIR / "2020.tif", 450))
    second = run_embedding(config)
    assert second.embedded == 3 + len(new_grid) and second.failed == 0, second.to_text()
    assert second.stale_removed == 1 + len(old_grid - new_grid), second.to_text()
    table.checkout_latest()
    rows = table.to_arrow().to_pylist()
    listed = {f.uri: f.version for f in listing.list_archive(archive)}
    assert len(rows) == len({r[tiles.ID] for r in rows}) == 3 + len(new_grid)
    assert all(r[tiles.SOURCE_VERSION] == listed[r[tiles.URI]] for r in rows)
    windows = {r[tiles.URI].rsplit("/", 1)[1]: set() for r in rows}
    for r in rows:
        windows[r[tiles.URI].rsplit("/", 1)[1]].add(tuple(r[c] for c in tiles.WINDOW_COLUMNS))
    assert windows == {"a.jpg": {(0, 0, 150, 150)}, "b.jpg": {(0, 0, 120, 100)}, "c.jpg": {(0, 0, 150, 150)},
                       "scene.tif": new_grid}
    a_id = tiles.tile_id(f"{archive}/a.jpg", 0, 0, 150, 150)  # the id stays: labels naming it stay valid
    a_row = next(r for r in rows if r[tiles.ID] == a_id)
    want = load_model(str(tiny_model)).encode_images([read_image(rsicd_files[500])])[0]
    np.testing.assert_allclose(a_row[tiles.VECTOR], want, atol=1e-4)
    assert not np.allclose(a_row[tiles.VECTOR], before[a_id][tiles.VECTOR], atol=1e-3)
    errors = tiles.connect(db).open_table(tiles.errors_table_name(tiles.DEFAULT_TABLE))
    assert errors.count_rows() == 0  # c.jpg embeds now: its error row is gone

    third = run_embedding(config)
    assert (third.embedded, third.skipped_present, third.stale_removed) == (0, 3 + len(new_grid), 0)

    # a table of an older rsclip (no version column, no weights) is upgraded in place, nothing re-embedded
    _make_legacy(db)
    put("b.jpg", rsicd_files[3].read_bytes())  # rewritten before the first run that records versions
    fourth = run_embedding(config)
    assert (fourth.embedded, fourth.skipped_present, fourth.stale_removed) == (1, 2 + len(new_grid), 1)
    table = tiles.open_table(db)
    assert list(table.schema.names) == list(tiles.COLUMNS) and tiles.table_weights(table) is not None
    assert None not in set(table.to_arrow().column(tiles.SOURCE_VERSION).to_pylist())


def _make_legacy(db: str) -> None:
    """Rewrite the tile table at ``db`` as rsclip 0.1 wrote it: no source versions, footprints, times, weights,
    grid."""
    conn = tiles.connect(db)
    data = conn.open_table(tiles.DEFAULT_TABLE).to_arrow()
    data = data.select([c for c in data.column_names
                        if c not in (tiles.SOURCE_VERSION, tiles.FOOTPRINT, *tiles.TIME_COLUMNS)])
    meta = {k: v for k, v in data.schema.metadata.items() if k in (tiles.META_MODEL, tiles.META_DIM)}
    # overwritten as a new version of the same table: Lance caches manifests by (location, version), so a
    # table dropped and created again under its name in this process (and its Ray workers) would meet them
    conn.create_table(tiles.DEFAULT_TABLE, data.replace_schema_metadata(meta), mode="overwrite")
