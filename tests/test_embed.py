"""rsclip.ingest (planning, reading, embedder, writer, pipeline): the embedder without Ray, the bad-input catalogue, reruns, the errors table."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsclip.core.windows import grid_windows
from rsclip.core import raster, tiles
from rsclip.errors import RsclipError
from rsclip.ingest import batch as B, listing, planning, reading, writer
from rsclip.ingest.embedder import ImageEmbedder, model_spec
from rsclip.ingest.pipeline import EmbedConfig, run_embedding
from rsclip.core.images import read_image
from rsclip.core.model import load_model
from rsclip.testing import build_tiny_clip
from tests.helpers import BUCKET, GEOTIFF_DIR, ROOT

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


def test_batch_size_defaults_by_device_and_an_explicit_one_wins():
    cpu = EmbedConfig(archive="a", db="d")
    gpu = EmbedConfig(archive="a", db="d", gpus_per_actor=0.5)
    assert (cpu.batch_size, gpu.batch_size) == (64, 256)
    assert EmbedConfig(archive="a", db="d", gpus_per_actor=1, batch_size=32).batch_size == 32
    assert EmbedConfig.from_dict(gpu.to_dict()) == gpu
    with pytest.raises(ValueError, match="batch size"):
        EmbedConfig(archive="a", db="d", batch_size=0)


# ---- the pipeline on the session Ray head (this process is the driver) ------------------------------


@pytest.fixture(scope="module")
def ray_driver(ray_head):
    import ray

    ray.init(address=ray_head.address, runtime_env={"py_modules": [str(ROOT / "rsclip")]},
             log_to_driver=False)
    try:
        yield ray_head
    finally:
        ray.shutdown()


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
                                                                      tiny_model, rsicd_files):
    db = f"{s3_prefix}/db"
    opts = raster.RasterOptions(tile_size=224, max_chip=300)
    config = EmbedConfig(archive=mixed_archive, db=db, model=str(tiny_model), raster=opts, batch_size=8,
                         commit_rows=8, cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1, index="always")
    scene_tiles = len(grid_windows(697, 377, 224))  # 2020.tif, 697 x 377 px
    catalogue = bad_files(rsicd_files)

    first = run_embedding(config)
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
    empty = run_embedding(EmbedConfig(archive=f"{s3_prefix}/nothing-here", model=str(tiny_model), **base))
    assert empty.files == 0 and "0 files" in empty.to_text()
    with pytest.raises(RsclipError, match="archive folder not found"):
        run_embedding(EmbedConfig(archive=str(tmp_path / "missing"), model=str(tiny_model), **base))
