"""GPU figures, without Ray: the embedding actor's work and fine-tuning steps of ViT-B/32 on one GPU.

    python bench/gpu.py --prepare .gpu/inputs.pkl     # here (CPU): real RSICD chips through the decode stage
    python bench/gpu.py --inputs .gpu/inputs.pkl      # on the GPU machine (torch + transformers, no Ray)
    python bench/gpu.py --inputs .gpu/inputs.pkl --device cpu --batch 4 --train-batch 4 --seconds 0.5 --repeats 2
                                                      # a smoke run of the script on CPU (figures meaningless)

The inputs are 64 real RSICD scenes: one read batch as ``reading.read_tiles`` leaves it (planned and decoded
by the library, uint8 at the model's input size), the same scenes' JPEG bytes, and the fine-tuning decode
stage's images (``transforms.decode_samples``, no augmentation) with a caption each. Batches of ``--batch``
rows repeat them. With a ViT-B/32-sized model of random weights (the default model's cost), built once, the
arms (each timed for at least ``--seconds`` after one untimed call, once per round; rounds interleaved, see
bench/common.py):

- ``embedder_img_s``: ``ImageEmbedder`` (the embedding actor's callable, fp16 weights on CUDA) on read
  batches: bytes -> arrays, host -> device as uint8, crop + normalise on the GPU, forward, vectors back;
- ``model_img_s``: the same encoder's forward alone on pixels already on the GPU; ``ratio`` = the two;
- ``autocast_model_img_s``: the forward of float32 weights under bf16 autocast (how the training loop's
  evaluation runs the encoder), for comparison;
- ``reference_img_s``: the actor of Ray's multimodal example (``CLIPProcessor`` on decoded images, then
  ``CLIPModel`` in its default float32 on the GPU), on the same batches; ``speedup`` = embedder / reference;
- ``train_bf16_samples_s`` / ``train_fp32_samples_s``: optimiser steps of the fine-tuning loop
  (``rsclip.train.loop.train_step``: tokenising, the loss, clipping, AdamW, the temperature clamp) at
  ``--train-batch``;
- ``fp16_cosine_min`` (measured once): the smallest cosine between a scene's fp16 GPU vector and its float32
  CPU vector.

``--transfer-ab`` instead compares the embedder with its uint8 batch stacked into page-locked memory
(``clip.uint8_to_device``) against a plain pageable ``.to(device)``. The last line printed is one JSON object.
"""

from __future__ import annotations

import io
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

N_SCENES = 64
TARGETS = [Target("speedup", ">=", 1.5, "rsclip's embedder over the reference actor on a GPU")]


def prepare(path: Path) -> None:
    """Plan and decode real chips with the library's own stages; keep their JPEG bytes and captions."""
    from dataclasses import asdict

    from rsclip.geo import raster
    from rsclip.table import tiles
    from rsclip.model.preprocess import ImagePreprocess
    from rsclip.ingest import batch as B, planning, reading
    from rsclip.train.data import CAPTIONS, IMAGE, read_samples
    from rsclip.train.transforms import StageConfig, decode_samples

    samples = read_samples([str(common.RSICD)], split="train")[:N_SCENES]
    uris = [str(s[IMAGE]) for s in samples]
    files = {tiles.URI: np.array(uris, dtype=object), B.SIZE: np.array([Path(u).stat().st_size for u in uris])}
    planned = planning.plan_files(files, asdict(raster.RasterOptions()))
    read = reading.read_tiles(planned, asdict(ImagePreprocess()))
    assert (read[B.STATUS] == B.READY).all(), read[B.MESSAGE]
    stage = StageConfig.from_preprocess(ImagePreprocess(), image_aug=False, text_aug=False)
    train_images, skipped = decode_samples(samples, stage)
    assert not skipped
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"read_batch": read, "jpegs": [Path(u).read_bytes() for u in uris],
                     "train_images": np.stack(train_images), "captions": [s[CAPTIONS][0] for s in samples]}, f)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(uris)} scenes)")


def repeat(batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    idx = np.arange(n) % len(next(iter(batch.values())))
    return {k: v[idx] for k, v in batch.items()}


def rate_arm(name: str, fn, n_items: int, seconds: float, sync) -> Arm:
    """Items/s of ``fn`` over at least ``seconds`` (and 3 calls) after one untimed call; warm-up: two calls."""
    def run() -> float:
        fn()
        sync()
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and calls >= 3:
                return calls * n_items / elapsed

    def warm() -> None:
        fn(), fn()
        sync()
    return Arm(name, run, warm=warm)


def embedding_arms(args, inputs: dict, model_dir: Path, sync) -> tuple[list[Arm], dict]:
    """The embedding arms and the figures measured once (the fp16 vectors' agreement with float32 CPU)."""
    import torch
    from PIL import Image
    from transformers import CLIPModel

    from bench.embed import ReferenceEmbedder
    from rsclip.model.clip import ClipEncoder, load_model
    from rsclip.ingest import batch as B
    from rsclip.ingest.embedder import ImageEmbedder

    on_gpu = args.device == "cuda"
    embedder = ImageEmbedder(str(model_dir), device=args.device)
    assert embedder.encoder.dtype == (torch.float16 if on_gpu else torch.float32)
    batch = repeat(inputs["read_batch"], args.batch)
    assert (embedder(batch)[B.STATUS] == B.EMBEDDED).all()
    images = B.batch_images(batch, range(args.batch))
    pixels = embedder.encoder.preprocess(images)
    fp32 = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).to(args.device)
    auto = ClipEncoder(fp32, embedder.encoder.tokenizer, embedder.encoder.preprocess_config,
                       source=str(model_dir), device=args.device)
    scenes = images[:N_SCENES]
    cosines = (load_model(str(model_dir), device="cpu").encode_images(scenes)
               * embedder.encoder.encode_images(scenes)).sum(axis=1)
    decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in inputs["jpegs"]]
    ref_batch = {"image": [decoded[i % len(decoded)] for i in range(args.batch)],
                 "path": np.array([f"scene{i}" for i in range(args.batch)], dtype=object)}
    reference = ReferenceEmbedder(str(model_dir), device=args.device)
    n, s = args.batch, args.seconds
    return [
        rate_arm("embedder_img_s", lambda: embedder(batch), n, s, sync),
        rate_arm("model_img_s", lambda: embedder.encoder.encode_pixels(pixels), n, s, sync),
        rate_arm("autocast_model_img_s", lambda: auto.encode_pixels(pixels), n, s, sync),
        rate_arm("reference_img_s", lambda: reference(ref_batch), n, s, sync),
    ], {"fp16_cosine_min": float(cosines.min())}


def train_arms(args, inputs: dict, model_dir: Path, sync) -> list[Arm]:
    """One arm per precision: optimiser steps of ``train_step`` on a learner built once."""
    import torch

    from rsclip.model.clip import normalize_pixels
    from rsclip.train.config import TrainConfig
    from rsclip.train.data import CAPTION, IMAGE
    from rsclip.train.loop import build_learner, load_clip, train_step

    device = torch.device(args.device)
    batch = repeat({IMAGE: inputs["train_images"], CAPTION: np.array(inputs["captions"], dtype=object)},
                   args.train_batch)
    arms = []
    for precision in ("bf16", "fp32"):
        cfg = TrainConfig(precision=precision, use_gpu=device.type == "cuda", batch_size=args.train_batch,
                          warmup_steps=10)
        learner = build_learner(*load_clip(model_dir), cfg, device=device, total_steps=100_000)
        if not arms:  # the pixels normalised on the device equal the host's
            on_device = normalize_pixels(batch[IMAGE], learner.preprocess, device, channels_last=True).cpu()
            assert torch.allclose(on_device, normalize_pixels(batch[IMAGE], learner.preprocess, channels_last=True),
                                  atol=1e-6)

        def step(learner=learner) -> None:
            assert np.isfinite(train_step(learner, [batch]))
        arms.append(rate_arm(f"train_{precision}_samples_s", step, args.train_batch, args.seconds, sync))
    return arms


def transfer_arms(args, inputs: dict, model_dir: Path, sync) -> tuple[list[Arm], dict]:
    """The embedder with pinned (``clip.uint8_to_device``) against pageable host-to-device copies, per batch
    size; returns the arms and the ratios (pinned / pageable)."""
    import torch

    from rsclip.model import clip
    from rsclip.ingest.embedder import ImageEmbedder

    pinned = clip.uint8_to_device

    def pageable(images, device):
        return torch.from_numpy(np.stack(images)).to(device, non_blocking=True)

    embedder = ImageEmbedder(str(model_dir), device=args.device)
    arms, ratios = [], {}
    for n in (64, 256) if args.device == "cuda" else (2, 4):  # cpu: a smoke run
        batch = repeat(inputs["read_batch"], n)
        for name, copy in (("pinned", pinned), ("pageable", pageable)):
            def embed(copy=copy, batch=batch):
                clip.uint8_to_device = copy
                try:
                    return embedder(batch)
                finally:
                    clip.uint8_to_device = pinned
            arms.append(rate_arm(f"embedder_b{n}_{name}", embed, n, min(args.seconds, 1.0), sync))
        ratios[f"pinned_over_pageable_b{n}"] = (f"embedder_b{n}_pinned", f"embedder_b{n}_pageable")
    return arms, ratios


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--prepare", type=Path, help="write the inputs file here and stop (CPU, needs rasterio)")
    p.add_argument("--inputs", type=Path, default=ROOT / ".gpu" / "inputs.pkl")
    p.add_argument("--batch", type=int, default=256, help="embedding batch (the job's --batch-size)")
    p.add_argument("--train-batch", type=int, default=256, help="fine-tuning batch per GPU")
    p.add_argument("--seconds", type=float, default=5.0, help="time each measurement at least this long")
    p.add_argument("--no-train", action="store_true", help="embedding figures only")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script, figures meaningless")
    p.add_argument("--transfer-ab", action="store_true",
                   help="only compare the host-to-device path (pinned vs pageable), interleaved")
    args = p.parse_args()
    if args.prepare:
        Bench("gpu", args, needs=[common.path_need(common.RSICD)]).start()
        prepare(args.prepare)
        return 0
    needs = [common.path_need(args.inputs, fix=f"make it here first: python bench/gpu.py --prepare {args.inputs}")]
    bench = Bench("gpu", args, needs=needs).start()
    import torch

    from rsclip.testing import build_vit_b32

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device (--device cpu runs a smoke test of the script)")
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    bench.say(f"torch {torch.__version__}, {name}")
    inputs = pickle.loads(args.inputs.read_bytes())
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    constants = {"device": name, "batch": args.batch, "train_batch": args.train_batch}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_vit_b32(Path(tmp) / "vit-b32")
        if args.transfer_ab:
            arms, ratios = transfer_arms(args, inputs, model_dir, sync)
            bench.finish(bench.rounds(arms), ratios=ratios, constants=constants)
            return 0
        arms, once = embedding_arms(args, inputs, model_dir, sync)
        if not args.no_train:
            arms += train_arms(args, inputs, model_dir, sync)
        figures = bench.rounds(arms)
    bench.finish(figures, ratios={"ratio": ("embedder_img_s", "model_img_s"),
                                  "speedup": ("embedder_img_s", "reference_img_s")},
                 once=once, constants=constants, targets=TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
