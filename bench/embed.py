"""Embedding throughput and memory: rsclip's pipeline vs. the model alone vs. a reference Ray Data pipeline.

    .venv/bin/python bench/embed.py                 # N=2000 real JPEG chips in a local SeaweedFS, CPU
    .venv/bin/python bench/embed.py --n 256 --quick # a smoke run

Measures, on one machine with a local Ray:
- ``e2e_img_s``: ``rsclip.embed.run_embedding`` (S3 listing, plan, decode+resize tasks, one embedder actor,
  LanceDB writes), embedded tiles over the pipeline's wall time, ViT-B/32-sized random model;
- ``model_img_s``: the same model, batch size and torch threads on pre-decoded, preprocessed tensors;
- ``reference_img_s``: the way Ray's multimodal (doggos) example embeds: ``read_images`` + a callable class
  running ``CLIPProcessor`` and ``CLIPModel`` inside ``map_batches``, its default settings (one actor, one CPU);
- ``rss_ratio_4x``: peak RSS (driver plus all Ray processes, summed) of the pipeline at 4N images over N
  (a fresh local Ray each; the tiny model, so the figure is the pipeline's memory, not the weights').
The last line is one JSON object.
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

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BUCKET = "rsclip-bench"
RSICD = Path(os.environ.get("RSCLIP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "rsicd-aid" / "RSICD_images"
BATCH = 64


def ray_init(attempts: int = 3):
    """A private local Ray (retried: on a loaded machine the node can time out while starting)."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=os.cpu_count() or 2, object_store_memory=1_000_000_000,
                     include_dashboard=False, log_to_driver=False,
                     runtime_env={"py_modules": [str(ROOT / "rsclip")]})
            return
        except Exception:
            ray.shutdown()
            if attempt == attempts - 1:
                raise


def upload(s3, n: int, prefix: str) -> str:
    """``n`` real chips under ``s3://BUCKET/prefix`` (the 2,100 scenes repeated under new names past 2,100)."""
    chips = sorted(RSICD.glob("*.jpg"))
    client = s3.client()
    for i in range(n):
        f = chips[i % len(chips)]
        client.upload_file(str(f), BUCKET, f"{prefix}/{i // len(chips)}/{f.name}")
    return f"s3://{BUCKET}/{prefix}"


def model_only(model_dir: str, threads: int, n_batches: int) -> float:
    """img/s of the encoder on preprocessed tensors: same model, batch size and threads as the actor."""
    import numpy as np
    import torch

    from rsclip.core.images import read_image
    from rsclip.core.model import load_model

    torch.set_num_threads(threads)
    enc = load_model(model_dir, device="cpu")
    chips = sorted(RSICD.glob("*.jpg"))[:BATCH]
    pixels = enc.preprocess([read_image(f) for f in chips])
    enc.encode_pixels(pixels)  # warm-up
    start = time.perf_counter()
    for _ in range(n_batches):
        out = enc.encode_pixels(pixels)
    elapsed = time.perf_counter() - start
    assert np.isfinite(out).all()
    return n_batches * BATCH / elapsed


def rsclip_pipeline(archive: str, db: str, model_dir: str, threads: int = 1) -> dict:
    from rsclip.ingest.pipeline import EmbedConfig, run_embedding

    summary = run_embedding(EmbedConfig(archive=archive, db=db, model=model_dir, batch_size=BATCH,
                                        torch_threads=threads, commit_rows=512, index="never"))
    return {"embedded": summary.embedded, "img_s": summary.images_per_s, "seconds": summary.seconds}


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
    import pyarrow.fs as pafs
    import ray

    fs = pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_override=env["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                           region=env["AWS_REGION"])
    ds = ray.data.read_images(archive.replace("s3://", ""), filesystem=fs, mode="RGB", include_paths=True)
    ds = ds.map_batches(ReferenceEmbedder, fn_constructor_kwargs={"model_dir": model_dir}, concurrency=1,
                        batch_size=BATCH)
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
    ray_init()
    result = rsclip_pipeline(archive, db, model_dir)
    done.set()
    t.join()
    print(json.dumps({"peak_rss": peak[0], **result}), flush=True)


def peak_rss(archive: str, db: str, model_dir: str, env: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--rss-run", archive, db, model_dir], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=7200)
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-3000:] + res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images for the throughput runs (default 2000)")
    parser.add_argument("--model-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the embedder actor and of the model-only run (default 1: the "
                             "actor reserves 1 of the 2 CPUs, the decode tasks the other)")
    parser.add_argument("--rss-run", nargs=3, metavar=("ARCHIVE", "DB", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_run:
        rss_run(*args.rss_run)
        return 0

    from infra.local_stack import SeaweedFS
    from rsclip.testing import build_tiny_clip, build_vit_b32

    work = Path(tempfile.mkdtemp(prefix="rsclip-bench-"))
    vit = str(build_vit_b32(work / "vit-b32"))
    tiny = str(build_tiny_clip(work / "tiny"))
    s3 = SeaweedFS(work / "seaweedfs", buckets=(BUCKET,)).start()
    os.environ.update(s3.env)
    try:
        n = args.n
        archive_n = upload(s3, n, "n")
        archive_4n = upload(s3, 4 * n, "n4")
        print(f"archive: {n} and {4 * n} real JPEG chips (150x150) in SeaweedFS", flush=True)
        threads = args.threads
        model_img_s = model_only(vit, threads, args.model_batches)
        print(f"model only (ViT-B/32 random init, batch {BATCH}, {threads} threads): {model_img_s:.2f} img/s",
              flush=True)
        import ray

        # each pipeline on a fresh local Ray, so neither inherits the other's warm worker processes
        ray_init()
        e2e = rsclip_pipeline(archive_n, f"s3://{BUCKET}/db-e2e", vit, threads)
        ray.shutdown()
        print(f"rsclip end to end: {e2e['embedded']} tiles, {e2e['img_s']:.2f} img/s", flush=True)
        ray_init()
        reference = reference_pipeline(archive_n, vit, s3.env)
        ray.shutdown()
        print(f"reference (read_images + CLIPProcessor in map_batches): {reference:.2f} img/s", flush=True)
        rss_n = peak_rss(archive_n, f"s3://{BUCKET}/db-rss-n", tiny, s3.env)
        rss_4n = peak_rss(archive_4n, f"s3://{BUCKET}/db-rss-4n", tiny, s3.env)
        print(f"peak RSS (tiny model): {rss_n['peak_rss'] / 2**20:.0f} MiB at {n}, "
              f"{rss_4n['peak_rss'] / 2**20:.0f} MiB at {4 * n}", flush=True)
        result = {
            "e2e_img_s": round(e2e["img_s"], 3),
            "model_img_s": round(model_img_s, 3),
            "ratio": round(e2e["img_s"] / model_img_s, 3),
            "reference_img_s": round(reference, 3),
            "rss_ratio_4x": round(rss_4n["peak_rss"] / rss_n["peak_rss"], 3),
            "n_images": n,
            "model": "ViT-B/32 (random init, rsclip.testing.build_vit_b32), CPU",
        }
        print(json.dumps(result), flush=True)
    finally:
        s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
