"""GPU figures, without Ray: the embedding actor's work and fine-tuning steps of ViT-B/32 on one GPU.

    python bench/gpu.py --prepare .gpu/inputs.pkl     # here (CPU): real RSICD chips through the decode stage
    python bench/gpu.py --inputs .gpu/inputs.pkl      # on the GPU machine (torch + transformers, no Ray)

The inputs are 64 real RSICD scenes: one read batch as ``reading.read_tiles`` leaves it (planned and decoded
by the library, uint8 at the model's input size), the same scenes' JPEG bytes, and the fine-tuning decode
stage's images (``data.decode_samples``, no augmentation) with a caption each. Batches of
``--batch`` rows repeat them. With a ViT-B/32-sized model of random weights (the default model's cost):

- ``embedder_img_s``: ``ImageEmbedder`` (the embedding actor's callable, fp16 weights on CUDA) on read
  batches: bytes -> arrays, host -> device as uint8, crop + normalise on the GPU, forward, vectors back;
- ``model_img_s``: the same encoder's forward alone on pixels already on the GPU; ``ratio`` = the two;
- ``autocast_model_img_s``: the forward of float32 weights under bf16 autocast (how the training loop's
  evaluation runs the encoder), for comparison;
- ``reference_img_s``: the actor of Ray's multimodal example (``CLIPProcessor`` on decoded images, then
  ``CLIPModel`` in its default float32 on the GPU), on the same batches; ``speedup`` = embedder / reference;
- ``fp16_cosine_min``: the smallest cosine between a scene's fp16 GPU vector and its float32 CPU vector;
- ``train_bf16_samples_s`` / ``train_fp32_samples_s``: optimiser steps of the fine-tuning loop's own pieces
  (``clip_batch_loss``, ``_optimizer_step``, logit-scale clamp; tokenisation each step) at ``--train-batch``.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

N_SCENES = 64


def prepare(path: Path) -> None:
    """Plan and decode real chips with the library's own stages; keep their JPEG bytes and captions."""
    from dataclasses import asdict

    from rsclip.core import raster, tiles
    from rsclip.ingest import batch as B, planning, reading
    from rsclip.train import data as rdata
    from rsclip.core.preprocess import ImagePreprocess

    samples = rdata.read_samples([str(ROOT.parent / "shared" / "data" / "rsicd-aid")], split="train")[:N_SCENES]
    uris = [str(s[rdata.IMAGE]) for s in samples]
    files = {tiles.URI: np.array(uris, dtype=object),
             B.SIZE: np.array([Path(u).stat().st_size for u in uris])}
    planned = planning.plan_files(files, asdict(raster.RasterOptions()))
    read = reading.read_tiles(planned, asdict(ImagePreprocess()))
    assert (read[B.STATUS] == B.READY).all(), read[B.MESSAGE]
    stage = rdata.StageConfig.from_preprocess(ImagePreprocess(), image_aug=False, text_aug=False)
    train_images, skipped = rdata.decode_samples(samples, stage)
    assert not skipped
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"read_batch": read, "jpegs": [Path(u).read_bytes() for u in uris],
                     "train_images": np.stack(train_images),
                     "captions": [s[rdata.CAPTIONS][0] for s in samples]}, f)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(uris)} scenes)")


def repeat(batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    idx = np.arange(n) % len(next(iter(batch.values())))
    return {k: v[idx] for k, v in batch.items()}


def rate(fn, n_items: int, seconds: float, sync) -> float:
    """Items/s of ``fn`` over at least ``seconds`` after two warm-up calls."""
    fn(), fn()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * n_items / elapsed


def transfer_ab(args) -> int:
    """The embedder with its uint8 batch stacked into page-locked memory (``model.uint8_to_device``) against
    a stack plus a plain pageable ``.to(device)``, alternated in one process."""
    import torch

    from rsclip.core import model
    from rsclip.ingest.embedder import ImageEmbedder
    from rsclip.testing import build_vit_b32

    pinned = model.uint8_to_device

    def pageable(images, device):
        return torch.from_numpy(np.stack(images)).to(device, non_blocking=True)

    inputs = pickle.loads(args.inputs.read_bytes())
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    figures: dict[str, list[float]] = {}
    sizes = (64, 256) if args.device == "cuda" else (2, 4)  # cpu: a smoke run
    with tempfile.TemporaryDirectory() as tmp:
        embedder = ImageEmbedder(str(build_vit_b32(Path(tmp) / "vit-b32")), device=args.device)
        for n in sizes:
            batch = repeat(inputs["read_batch"], n)
            for _ in range(3):
                for name, fn in (("pinned", pinned), ("pageable", pageable)):
                    model.uint8_to_device = fn
                    figures.setdefault(f"embedder_b{n}_{name}", []).append(
                        rate(lambda: embedder(batch), n, 1.0, sync))
    model.uint8_to_device = pinned
    medians = {k: float(np.median(v)) for k, v in figures.items()}
    for n in sizes:
        a, b = medians[f"embedder_b{n}_pinned"], medians[f"embedder_b{n}_pageable"]
        print(f"embedder batch {n}: pinned {a:.0f}/s, pageable {b:.0f}/s, ratio {a / b:.2f}", flush=True)
    print(json.dumps({k: round(v, 1) for k, v in medians.items()}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", type=Path, help="write the inputs file here and stop (CPU, needs rasterio)")
    parser.add_argument("--inputs", type=Path, default=ROOT / ".gpu" / "inputs.pkl")
    parser.add_argument("--batch", type=int, default=256, help="embedding batch (the job's --batch-size)")
    parser.add_argument("--train-batch", type=int, default=256, help="fine-tuning batch per GPU")
    parser.add_argument("--seconds", type=float, default=5.0, help="time each measurement at least this long")
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    parser.add_argument("--no-train", action="store_true", help="embedding figures only")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script, figures meaningless")
    parser.add_argument("--transfer-ab", action="store_true",
                        help="only compare the host-to-device path (pinned vs pageable), interleaved")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return 0
    if args.transfer_ab:
        return transfer_ab(args)

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from bench.embed import ReferenceEmbedder
    from rsclip.core.model import normalize_pixels
    from rsclip.ingest import batch as B
    from rsclip.ingest.embedder import ImageEmbedder
    from rsclip.train import data as rdata
    from rsclip.train.loss import clamp_logit_scale_
    from rsclip.core.model import ClipEncoder, ImagePreprocess, load_model
    from rsclip.testing import build_vit_b32
    from rsclip.train.loop import TrainConfig, _optimizer_step, autocast_dtype, build_optimizer, build_scheduler, \
        clip_batch_loss

    on_gpu = args.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"torch {torch.__version__}, {name}", flush=True)
    inputs = pickle.loads(args.inputs.read_bytes())
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    figures: dict = {"device": name, "batch": args.batch, "train_batch": args.train_batch}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_vit_b32(Path(tmp) / "vit-b32")

        # the embedding actor
        embedder = ImageEmbedder(str(model_dir), device=args.device)
        assert embedder.encoder.dtype == (torch.float16 if on_gpu else torch.float32)
        batch = repeat(inputs["read_batch"], args.batch)
        out = embedder(batch)
        assert (out[B.STATUS] == B.EMBEDDED).all(), set(out[B.MESSAGE])
        figures["embedder_img_s"] = rate(lambda: embedder(batch), args.batch, args.seconds, sync)
        images = B.batch_images(batch, range(args.batch))
        pixels = embedder.encoder.preprocess(images)
        figures["model_img_s"] = rate(lambda: embedder.encoder.encode_pixels(pixels), args.batch, args.seconds,
                                      sync)
        figures["ratio"] = figures["embedder_img_s"] / figures["model_img_s"]
        print(f"embedder {figures['embedder_img_s']:.0f} img/s, model alone {figures['model_img_s']:.0f} "
              f"(ratio {figures['ratio']:.3f})", flush=True)

        fp32 = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).to(args.device)
        auto = ClipEncoder(fp32, embedder.encoder.tokenizer, embedder.encoder.preprocess_config,
                           source=str(model_dir), device=args.device)
        figures["autocast_model_img_s"] = rate(lambda: auto.encode_pixels(pixels), args.batch, args.seconds, sync)
        print(f"float32 weights under bf16 autocast: {figures['autocast_model_img_s']:.0f} img/s", flush=True)

        scenes = images[:N_SCENES]
        cpu = load_model(str(model_dir), device="cpu").encode_images(scenes)
        gpu = embedder.encoder.encode_images(scenes)
        figures["fp16_cosine_min"] = float((cpu * gpu).sum(axis=1).min())
        print(f"fp16 GPU vs fp32 CPU vectors: min cosine {figures['fp16_cosine_min']:.5f}", flush=True)

        decoded = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in inputs["jpegs"]]
        ref_batch = {"image": [decoded[i % len(decoded)] for i in range(args.batch)],
                     "path": np.array([f"scene{i}" for i in range(args.batch)], dtype=object)}
        reference = ReferenceEmbedder(str(model_dir), device=args.device)
        figures["reference_img_s"] = rate(lambda: reference(ref_batch), args.batch, args.seconds, sync)
        figures["speedup"] = figures["embedder_img_s"] / figures["reference_img_s"]
        print(f"reference actor (CLIPProcessor + float32 CLIPModel): {figures['reference_img_s']:.0f} img/s; "
              f"rsclip {figures['speedup']:.2f}x", flush=True)

        # fine-tuning steps
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        preprocess = ImagePreprocess.from_processor(AutoImageProcessor.from_pretrained(model_dir))
        train_batch = repeat({rdata.IMAGE: inputs["train_images"],
                              rdata.CAPTION: np.array(inputs["captions"], dtype=object)}, args.train_batch)
        device = torch.device(args.device)
        on_device = normalize_pixels(train_batch[rdata.IMAGE], preprocess, device, channels_last=True).cpu()
        assert torch.allclose(on_device, normalize_pixels(train_batch[rdata.IMAGE], preprocess, channels_last=True), atol=1e-6)
        for precision in () if args.no_train else ("bf16", "fp32"):
            cfg = TrainConfig(precision=precision, use_gpu=on_gpu, batch_size=args.train_batch, warmup_steps=10)
            model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).to(device).train()
            optimizer = build_optimizer(model, cfg)
            scheduler = build_scheduler(optimizer, cfg, 10_000)
            amp = autocast_dtype(cfg, device)
            losses = []

            def step():
                loss = clip_batch_loss(model, train_batch, tokenizer, preprocess, device, amp, 77)
                loss.backward()
                _optimizer_step(model, optimizer, scheduler, None, cfg)
                clamp_logit_scale_(model.logit_scale)
                losses.append(float(loss.detach()))

            figures[f"train_{precision}_samples_s"] = rate(step, args.train_batch, args.seconds, sync)
            assert np.isfinite(losses).all(), losses
            print(f"fine-tuning {precision}: {figures[f'train_{precision}_samples_s']:.0f} samples/s "
                  f"(loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps)", flush=True)
    line = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
    if args.out:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
