"""Embedding throughput and memory: rsclip's pipeline vs. the model alone vs. a reference Ray Data pipeline.

    .venv/bin/python bench/embed.py                                  # N=1500 real JPEG chips, 3 rounds, CPU
    .venv/bin/python bench/embed.py --n 128 --rss-n 64 --model-batches 1 --repeats 2    # a smoke run

The archive (real 150x150 RSICD/AID chips in a local SeaweedFS) and the models are made once; every pipeline
runs on a fresh local Ray (so none inherits another's warm worker processes) and writes a fresh table. The
arms, once per round (rounds interleaved, see bench/common.py):

- ``e2e``: ``rsclip.ingest.pipeline.run_embedding`` (S3 listing, plan, decode+resize tasks, one embedder
  actor, LanceDB writes): embedded tiles over the pipeline's wall time, ViT-B/32-sized random model;
- ``model``: the same model, batch size and torch threads on pre-decoded, preprocessed tensors (loaded once;
  one untimed batch first in every round);
- ``reference``: the way Ray's multimodal (doggos) example embeds: ``read_images`` + a callable class running
  ``CLIPProcessor`` and ``CLIPModel`` inside ``map_batches``, its default settings (one actor, one CPU);
- ``rss_n`` / ``rss_4n``: peak RSS (driver plus all Ray processes, summed) of the pipeline at ``--rss-n`` and
  4x as many images (a child process and a fresh local Ray each; the tiny model, so the figure is the
  pipeline's memory, not the weights'); memory needs no warm-up.

Ratios, taken round by round: ``ratio`` = e2e / model, ``reference_ratio`` = e2e / reference,
``rss_ratio_4x`` = peak RSS at 4x over 1x. The warm-up runs the pipelines on 64 chips. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BUCKET = "rsclip-bench"
BATCH = 64
WARM_CHIPS = 64
MIB = 2**20
TARGETS = [
    Target("ratio", ">=", 0.90, "end to end / model only"),
    Target("reference_ratio", ">=", 1.0, "rsclip not slower than the reference pipeline"),
    Target("rss_ratio_4x", "<=", 1.3, "peak RSS at 4N / N"),
]


def ray_init(attempts: int = 3) -> None:
    """A private local Ray (retried: on a loaded machine the node can time out while starting)."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=common.cpus(), object_store_memory=1_000_000_000,
                     include_dashboard=False, log_to_driver=False,
                     runtime_env={"py_modules": [str(ROOT / "rsclip")]})
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def on_fresh_ray(work):
    """``work()`` on a fresh local Ray, shut down afterwards."""
    import ray

    ray_init()
    try:
        return work()
    finally:
        ray.shutdown()


class ModelOnly:
    """img/s of the encoder on preprocessed tensors: same model, batch size and threads as the actor."""

    def __init__(self, model_dir: str, threads: int, n_batches: int):
        self.model_dir, self.threads, self.n_batches = model_dir, threads, n_batches
        self.encoder = self.pixels = None

    def __call__(self) -> float:
        import numpy as np
        import torch

        from rsclip.geo.images import read_image
        from rsclip.model.clip import load_model

        torch.set_num_threads(self.threads)
        if self.encoder is None:  # loaded once: the weights need not be fresh
            self.encoder = load_model(self.model_dir, device="cpu")
            self.pixels = self.encoder.preprocess([read_image(f) for f in common.chips(BATCH)])
        self.encoder.encode_pixels(self.pixels)  # untimed: the other arms ran in between
        start = time.perf_counter()
        for _ in range(self.n_batches):
            out = self.encoder.encode_pixels(self.pixels)
        elapsed = time.perf_counter() - start
        assert np.isfinite(out).all()
        return self.n_batches * BATCH / elapsed


def rsclip_pipeline(archive: str, db: str, model_dir: str, threads: int = 1) -> dict:
    from rsclip.ingest.config import EmbedConfig
    from rsclip.ingest.pipeline import run_embedding

    summary = run_embedding(EmbedConfig(archive=archive, db=db, model=model_dir, batch_size=BATCH,
                                        torch_threads=threads, commit_rows=512, index="never"))
    # the whole run's rate, start-up included, as in every earlier figure of BENCHMARKS.md (the job's summary
    # now counts images/s from its first embedded batch: reported beside it as steady_img_s)
    return {"embedded": summary.embedded, "img_s": summary.embedded / summary.seconds if summary.seconds else 0.0,
            "steady_img_s": summary.images_per_s, "seconds": summary.seconds}


class ReferenceEmbedder:
    """As in Ray's multimodal example: CLIPProcessor + CLIPModel inside a callable class (the model in its
    default float32, moved to ``device``)."""

    def __init__(self, model_dir: str, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.processor = CLIPProcessor.from_pretrained(model_dir)
        self.model = CLIPModel.from_pretrained(model_dir).eval().to(device)

    def __call__(self, batch):
        import torch
        from PIL import Image

        images = [Image.fromarray(x) for x in batch["image"]]
        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        feats = getattr(out, "pooler_output", out)
        return {"path": batch["path"], "embedding": feats.cpu().numpy()}


def reference_pipeline(archive: str, model_dir: str, env: dict) -> float:
    """img/s of the reference pipeline over ``archive`` (timed from the first pull, as Ray runs lazily)."""
    import pyarrow.fs as pafs
    import ray

    fs = pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_override=env["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                           region=env["AWS_REGION"])
    ds = ray.data.read_images(archive.replace("s3://", ""), filesystem=fs, mode="RGB", include_paths=True)
    ds = ds.map_batches(ReferenceEmbedder, fn_constructor_kwargs={"model_dir": model_dir},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=BATCH)
    start = time.monotonic()
    n = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n += len(batch["embedding"])
    return n / (time.monotonic() - start)


def process_tree_rss(root_pid: int) -> int:
    """Summed RSS in bytes of ``root_pid`` and all its descendants (read from /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry.name)] = int(line.split()[1]) * 1024
    total = 0
    for pid, size in rss.items():
        p = pid
        while p and p != root_pid:
            p = parent.get(p, 0)
        if p == root_pid:
            total += size
    return total


def rss_run(archive: str, db: str, model_dir: str) -> None:
    """Child process: run the pipeline on a fresh local Ray; print the peak RSS of this process tree."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process_tree_rss(os.getpid()))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    result = on_fresh_ray(lambda: rsclip_pipeline(archive, db, model_dir))
    done.set()
    t.join()
    print(json.dumps({"peak_rss": peak[0], **result}), flush=True)


def peak_rss(archive: str, db: str, model_dir: str, env: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--rss-run", archive, db, model_dir], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=7200)
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-3000:] + res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


class Archives:
    """Chip archives in the S3 server, uploaded once per size and shared by every run; fresh table locations."""

    def __init__(self, s3):
        self.s3, self.uploaded, self.tables = s3, {}, 0

    def of(self, n: int) -> str:
        if n not in self.uploaded:
            self.uploaded[n] = common.upload_chips(self.s3.client(), BUCKET, f"n{n}", common.chips(n))
        return self.uploaded[n]

    def fresh_db(self, name: str) -> str:
        """A new table location: a pipeline run into an existing table would skip the tiles already there."""
        self.tables += 1
        return f"s3://{BUCKET}/db-{name}-{self.tables}"


def arms(args, archives: Archives, vit: str, tiny: str, env: dict) -> list[Arm]:
    """The arms compared in every round (see the module doc)."""
    def e2e(n: int) -> float:
        return on_fresh_ray(lambda: rsclip_pipeline(archives.of(n), archives.fresh_db("e2e"), vit,
                                                    args.threads))["img_s"]

    def reference(n: int) -> float:
        return on_fresh_ray(lambda: reference_pipeline(archives.of(n), vit, env))

    def rss(n: int) -> float:
        return peak_rss(archives.of(n), archives.fresh_db("rss"), tiny, env)["peak_rss"] / MIB

    return [
        Arm("model_img_s", ModelOnly(vit, args.threads, args.model_batches)),
        Arm("e2e_img_s", lambda: e2e(args.n), warm=lambda: e2e(WARM_CHIPS)),
        Arm("reference_img_s", lambda: reference(args.n), warm=lambda: reference(WARM_CHIPS)),
        Arm("peak_rss_n_mib", lambda: rss(args.rss_n), warm=common.NO_WARMUP),
        Arm("peak_rss_4n_mib", lambda: rss(4 * args.rss_n), warm=common.NO_WARMUP),
    ]


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--n", type=int, default=1500,
                   help="images for the throughput runs (default 1500: make bench's, for its time budget; the "
                        "fixed start-up weighs less the larger N is)")
    p.add_argument("--rss-n", type=int, default=500,
                   help="images of the smaller memory run; the larger has 4x as many (default 500)")
    p.add_argument("--model-batches", type=int, default=4,
                   help=f"timed batches of {BATCH} per model-only run (default 4)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the embedder actor and of the model-only run (default 1: the "
                        "actor reserves 1 of the 2 CPUs, the decode tasks the other)")
    p.add_argument("--rss-run", nargs=3, metavar=("ARCHIVE", "DB", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_run:
        rss_run(*args.rss_run)
        return 0
    bench = Bench("embed", args, needs=[common.path_need(common.RSICD_IMAGES), common.binary_need("weed")]).start()

    from infra.local_stack import SeaweedFS
    from rsclip.testing import build_tiny_clip, build_vit_b32

    with tempfile.TemporaryDirectory(prefix="rsclip-bench-") as tmp:
        work = Path(tmp)
        vit, tiny = str(build_vit_b32(work / "vit-b32")), str(build_tiny_clip(work / "tiny"))
        with SeaweedFS(work / "seaweedfs", buckets=(BUCKET,)) as s3:
            os.environ.update(s3.env)
            archives = Archives(s3)
            for n in sorted({WARM_CHIPS, args.n, args.rss_n, 4 * args.rss_n}):
                archives.of(n)
            print(f"archives: {sorted(archives.uploaded)} real JPEG chips (150x150) in SeaweedFS", flush=True)
            figures = bench.rounds(arms(args, archives, vit, tiny, s3.env))
    bench.finish(figures, ratios={"ratio": ("e2e_img_s", "model_img_s"),
                                  "reference_ratio": ("e2e_img_s", "reference_img_s"),
                                  "rss_ratio_4x": ("peak_rss_4n_mib", "peak_rss_n_mib")},
                 constants={"n_images": args.n, "rss_n_images": args.rss_n,
                            "model": "ViT-B/32 (random init, rsclip.testing.build_vit_b32), CPU"},
                 targets=TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
