"""The per-core and per-device rates that size a cluster (README "Scaling out").

    python bench/scaling.py [--chips 600] [--windows 300] [--batches 4] [--batch-size 64] [--repeats 3]

Measured on real data from ``../shared/data``, one process, each rate once per round (rounds interleaved,
see bench/common.py), reported as the median over the rounds with its min-max spread:

- ``chip_decode``: RSICD JPEG bytes (150x150) -> ``decode_image`` -> ``resize_shortest_side`` (to 224), the
  work of one CPU decode task per tile, on one thread;
- ``s3_chips``: the same chips uploaded once to a local SeaweedFS and read back by the pipeline's own stages
  (``planning.plan_files``: GET + header check; ``reading.read_tiles``: decode + resize), in one process;
  reported per CPU-second of this process (the S3 server's own CPU is not counted), which is what a read
  task costs a core;
- ``geotiff_windows``: 224x224 RGB windows of a NAIP GeoTIFF through rasterio (local file: the S3 latency
  that comes on top is hidden by running many reads at once), scaled to uint8, on one thread;
- ``encoder``: ViT-B/32-sized CLIP (``rsclip.testing.build_vit_b32``: random weights, the real compute) on
  this machine's device, ``encode_pixels`` on preprocessed batches (preprocessing excluded: on a GPU it runs
  on the device), built once;
- bytes per tile that cross the object store (uint8 HWC at the model's input size).

No baseline and no target: these are the inputs of a sizing calculation. The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Arm, Bench  # noqa: E402

NAIP = common.DATA / "geotiff" / "m_4709963_se_14_1_20200831.tif"
TILE = 224
BUCKET = "scaling"


def chip_rate(blobs: list[tuple[bytes, str]], preprocess) -> float:
    """Tiles per second per core: decode + resize of JPEG chips already in memory."""
    from rsclip.geo.images import decode_image
    from rsclip.model.preprocess import resize_shortest_side

    start = time.perf_counter()
    for data, name in blobs:
        resize_shortest_side(decode_image(data, name), preprocess)
    return len(blobs) / (time.perf_counter() - start)


def listed_batch(uri: str) -> dict:
    """The listing stage's batch for every object under ``uri``."""
    import numpy as np

    from rsclip.table import tiles
    from rsclip.ingest import batch as B, listing

    listed = listing.list_archive(uri)
    return {tiles.URI: np.array([f.uri for f in listed], dtype=object), B.SIZE: np.array([f.size for f in listed])}


def s3_chip_rate(batch: dict, preprocess) -> float:
    """Tiles per CPU-second of this process: the listed chips read back from S3 by the pipeline's plan and
    read stages."""
    import numpy as np

    from rsclip.geo import raster
    from rsclip.ingest import batch as B, planning, reading

    start = time.process_time()
    planned = planning.plan_files(batch, options=asdict(raster.RasterOptions()))
    out = reading.read_tiles(planned, preprocess=asdict(preprocess))
    elapsed = time.process_time() - start
    assert (np.asarray(out[B.STATUS]) == B.READY).all()
    return len(out[B.STATUS]) / elapsed


def window_rate(n: int, preprocess) -> float:
    """Tiles per second per core: 224x224 RGB window reads of a GeoTIFF, scaled to uint8."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from rsclip.model.preprocess import resize_shortest_side

    with rasterio.open(NAIP) as src:
        cols, rows = src.width // TILE, src.height // TILE
        windows = [(c * TILE, r * TILE) for r in range(rows) for c in range(cols)]
        start = time.perf_counter()
        for i in range(n):
            x, y = windows[i % len(windows)]
            data = src.read([1, 2, 3], window=Window(x, y, TILE, TILE))
            resize_shortest_side(np.ascontiguousarray(data.transpose(1, 2, 0)).astype(np.uint8), preprocess)
        return n / (time.perf_counter() - start)


def encoder_arm(work: Path, batches: int, batch_size: int):
    """The encoder (built once) and ``(run, warm)``: tiles per second over ``batches`` batches, one batch."""
    import numpy as np

    from rsclip.model.clip import load_model
    from rsclip.testing import build_vit_b32

    encoder = load_model(build_vit_b32(work / "vit-b32"))
    cfg = encoder.preprocess_config
    images = [np.random.default_rng(i).integers(0, 255, (cfg.crop_height, cfg.crop_width, 3), dtype=np.uint8)
              for i in range(batch_size)]
    pixels = encoder.preprocess(images)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(batches):
            encoder.encode_pixels(pixels)
        return batches * batch_size / (time.perf_counter() - start)

    return encoder, run, lambda: encoder.encode_pixels(pixels)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--chips", type=int, default=600, help="chips decoded from memory per round (default 600)")
    p.add_argument("--s3-chips", type=int, default=256,
                   help="chips read back from S3 per round (at most --chips; default 256)")
    p.add_argument("--windows", type=int, default=300, help="GeoTIFF windows read per round (default 300)")
    p.add_argument("--batches", type=int, default=4, help="encoder batches per round (default 4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the encoder on CPU")
    args = p.parse_args(argv)
    bench = Bench("scaling", args, needs=[common.path_need(common.RSICD_IMAGES), common.path_need(NAIP),
                                          common.binary_need("weed")]).start()

    import torch

    from infra.local_stack import SeaweedFS, environment
    from rsclip.model.preprocess import ImagePreprocess

    torch.set_num_threads(args.threads)
    preprocess = ImagePreprocess()
    files = sorted(common.RSICD_IMAGES.glob("*.jpg"))[:: max(1, 2100 // args.chips)][: args.chips]
    blobs = [(f.read_bytes(), f.name) for f in files]
    with tempfile.TemporaryDirectory() as tmp, SeaweedFS(Path(tmp) / "seaweedfs", buckets=(BUCKET,)) as s3, \
            environment(s3.env):
        # the S3 archive is uploaded once and read back every round
        batch = listed_batch(common.upload_chips(s3.client(), BUCKET, "chips", files[: args.s3_chips]))
        encoder, encode, encode_once = encoder_arm(Path(tmp), args.batches, args.batch_size)
        figures = bench.rounds([
            Arm("chip_decode_tiles_per_s_per_core", lambda: chip_rate(blobs, preprocess)),
            Arm("s3_chip_tiles_per_s_per_core", lambda: s3_chip_rate(batch, preprocess)),
            Arm("geotiff_window_tiles_per_s_per_core", lambda: window_rate(args.windows, preprocess)),
            Arm("vit_b32_tiles_per_s", encode, warm=encode_once),
        ])
    bench.finish(figures, constants={
        "encoder_device": str(encoder.device), "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "bytes_per_tile_in_object_store": TILE * TILE * 3,
        "load_average_1min": round(os.getloadavg()[0], 1),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
