"""The per-core and per-device rates that size a cluster (README "Scaling out").

    python bench/scaling.py [--chips 600] [--windows 300] [--batches 4] [--batch-size 64]

Measured on real data from ``../shared/data``, one process:

- chip decode: RSICD JPEG bytes (150x150) -> ``decode_image`` -> ``resize_shortest_side`` (to 224), the work
  of one CPU decode task per tile, on one thread;
- chips from S3: the same chips uploaded to a local SeaweedFS and read back by the pipeline's own stages
  (``planning.plan_files``: GET + header check; ``reading.read_tiles``: decode + resize), in one process;
  reported per CPU-second of this process (the S3 server's own CPU is not counted), which is what a read
  task costs a core;
- raster window read: 224x224 RGB windows of a NAIP GeoTIFF through rasterio (local file: the S3 latency
  that comes on top is hidden by running many reads at once), scaled to uint8, on one thread;
- encoder: ViT-B/32-sized CLIP (``rsclip.testing.build_vit_b32``: random weights, the real compute) on this
  machine's device, ``encode_pixels`` on preprocessed batches (preprocessing excluded: on a GPU it runs on
  the device), after one warm-up batch;
- bytes per tile that cross the object store (uint8 HWC at the model's input size).

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsclip.core.images import decode_image  # noqa: E402
from rsclip.core.model import load_model  # noqa: E402
from rsclip.core.preprocess import resize_shortest_side  # noqa: E402
from rsclip.testing import build_vit_b32  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
NAIP = DATA / "geotiff" / "m_4709963_se_14_1_20200831.tif"
TILE = 224


def chip_rate(files: list[Path], preprocess) -> float:
    """Tiles per second per core: decode + resize of JPEG chips already in memory."""
    blobs = [(f.read_bytes(), f.name) for f in files]
    start = time.perf_counter()
    for data, name in blobs:
        resize_shortest_side(decode_image(data, name), preprocess)
    return len(blobs) / (time.perf_counter() - start)


def s3_chip_rate(files: list[Path], preprocess) -> float:
    """Tiles per CPU-second of this process: ``files`` read back from a local SeaweedFS by the pipeline's
    plan and read stages (one warm-up pass, then one timed pass)."""
    from dataclasses import asdict

    from infra.local_stack import SeaweedFS, environment
    from rsclip.core import raster, tiles
    from rsclip.ingest import batch as B, listing, planning, reading

    with tempfile.TemporaryDirectory() as tmp:
        s3 = SeaweedFS(Path(tmp) / "seaweedfs", buckets=("scaling",)).start()
        try:
            with environment(s3.env):
                client = s3.client()
                for f in files:
                    client.upload_file(str(f), "scaling", f"chips/{f.name}")
                listed = listing.list_archive("s3://scaling/chips")
                batch = {tiles.URI: np.array([f.uri for f in listed], dtype=object),
                         B.SIZE: np.array([f.size for f in listed])}

                def one_pass():
                    planned = planning.plan_files(batch, options=asdict(raster.RasterOptions()))
                    out = reading.read_tiles(planned, preprocess=asdict(preprocess))
                    assert (np.asarray(out[B.STATUS]) == B.READY).all()

                one_pass()
                start = time.process_time()
                one_pass()
                return len(listed) / (time.process_time() - start)
        finally:
            s3.stop()


def window_rate(n: int, preprocess) -> float:
    """Tiles per second per core: 224x224 RGB window reads of a GeoTIFF, scaled to uint8."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(NAIP) as src:
        cols, rows = src.width // TILE, src.height // TILE
        windows = [(c * TILE, r * TILE) for r in range(rows) for c in range(cols)]
        start = time.perf_counter()
        for i in range(n):
            x, y = windows[i % len(windows)]
            data = src.read([1, 2, 3], window=Window(x, y, TILE, TILE))
            resize_shortest_side(np.ascontiguousarray(data.transpose(1, 2, 0)).astype(np.uint8), preprocess)
        return n / (time.perf_counter() - start)


def encoder_rate(batches: int, batch_size: int) -> tuple[float, str]:
    """Tiles per second of the ViT-B/32 image tower on this machine's default device."""
    with tempfile.TemporaryDirectory() as tmp:
        encoder = load_model(build_vit_b32(Path(tmp) / "vit-b32"))
    cfg = encoder.preprocess_config
    images = [np.random.default_rng(i).integers(0, 255, (cfg.crop_height, cfg.crop_width, 3), dtype=np.uint8)
              for i in range(batch_size)]
    pixels = encoder.preprocess(images)
    encoder.encode_pixels(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        encoder.encode_pixels(pixels)
    return batches * batch_size / (time.perf_counter() - start), str(encoder.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=600)
    parser.add_argument("--s3-chips", type=int, default=256, help="chips read back from S3 (at most --chips)")
    parser.add_argument("--windows", type=int, default=300)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the encoder on CPU")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from rsclip.core.model import ImagePreprocess

    preprocess = ImagePreprocess()
    files = sorted((DATA / "rsicd-aid" / "RSICD_images").glob("*.jpg"))[:: max(1, 2100 // args.chips)][: args.chips]
    chips = chip_rate(files, preprocess)
    print(f"chip decode+resize (150->224 JPEG), 1 thread: {chips:,.0f} tiles/s", flush=True)
    s3_chips = s3_chip_rate(files[: args.s3_chips], preprocess)
    print(f"chips from S3 (GET + plan + decode + resize), per CPU-second: {s3_chips:,.0f} tiles/s", flush=True)
    windows = window_rate(args.windows, preprocess)
    print(f"GeoTIFF 224x224 window read (NAIP, local), 1 thread: {windows:,.0f} tiles/s", flush=True)
    encoded, device = encoder_rate(args.batches, args.batch_size)
    print(f"ViT-B/32 image tower on {device} ({torch.get_num_threads()} threads), batch {args.batch_size}: "
          f"{encoded:,.1f} tiles/s", flush=True)
    result = {
        "chip_decode_tiles_per_s_per_core": round(chips, 1),
        "s3_chip_tiles_per_s_per_core": round(s3_chips, 1),
        "geotiff_window_tiles_per_s_per_core": round(windows, 1),
        "vit_b32_tiles_per_s": round(encoded, 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "encoder_device": device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "bytes_per_tile_in_object_store": TILE * TILE * 3,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
