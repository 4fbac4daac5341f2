"""Training throughput: Ray Train (1 worker, then 2) against a plain PyTorch loop, same model, batch and data.

    python bench/train.py                       # ViT-B/32-sized CLIP, batch 16, real RSICD scenes, 3 rounds
    python bench/train.py --model-size tiny --batch-size 8 --steps 4 --repeats 2      # a smoke run

The arms, once per round (rounds interleaved, see bench/common.py):

- ``ray`` / ``ray2``: the production path with 1 and 2 workers (``--workers``): ``rsclip.train.driver.build_trainer`` and
  ``train_loop_per_worker`` (DDP wrapping, each worker decoding its share of the scenes per epoch through
  Ray Data, the gathered loss, per-step collectives, tokenisation; validation and a checkpoint at each
  epoch's end). Each fit is a fresh trainer of two epochs; the second epoch's samples/s counts (measured by
  ``run_epoch`` itself, so start-up, validation and checkpoint writes are outside it; the first epoch is the
  fit's warm-up, discarded). The local Ray cluster is started once and shared by the fits.
- ``plain``: ``rsclip.train.loop.run_epoch`` (the same loss, optimiser step and clock) in this process, on a
  learner built once, over the same scenes decoded once up front without augmentation: one epoch per round,
  after a discarded warm-up step.

``ratio`` = Ray with 1 worker / plain, round by round; decoding is small beside a ViT-B/32 step (~2 ms per
scene against ~0.2 s of training per sample on CPU). The last line printed is one JSON object.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

EPOCHS = 2  # per Ray fit: the first is its warm-up
VAL_SAMPLES = 16
DATA_CPUS = 0.5  # per decode task; Ray gets one logical CPU beyond the cores for them (decoding is light)
RAY_KEYS = {1: "ray_samples_s", 2: "ray2_samples_s"}
TARGETS = [Target("ratio", ">=", 0.90, "Ray Train with 1 worker / plain PyTorch loop")]


def train_config(args, model_dir: Path, output: str, workers: int):
    """The settings every arm shares: no augmentation, no shuffle buffer, no retries."""
    from rsclip.train.config import TrainConfig

    return TrainConfig(data=["<bench>"], output=output, model=str(model_dir), epochs=EPOCHS,
                       batch_size=args.batch_size, lr=1e-5, warmup_steps=2, use_gpu=args.use_gpu,
                       shuffle_buffer=0, max_failures=0, image_aug=False, text_aug=False, keep_checkpoints=1,
                       num_workers=workers, cpus_per_worker=args.cpus / workers, data_cpus=DATA_CPUS).validate()


class PlainLoop:
    """Samples/s of one epoch of ``run_epoch`` in this process, on a learner built once."""

    def __init__(self, args, model_dir: Path, samples: list[dict]):
        import numpy as np
        import torch

        from rsclip.train.data import CAPTION, CAPTIONS, IMAGE
        from rsclip.train.loop import build_learner, load_clip, steps_per_epoch
        from rsclip.train.transforms import StageConfig, decode_samples

        cfg = train_config(args, model_dir, str(model_dir.parent / "plain"), workers=1)  # writes nothing
        torch.set_num_threads(max(1, int(args.cpus)))
        device = torch.device("cuda" if args.use_gpu else "cpu")
        self.learner = build_learner(*load_clip(model_dir), cfg, device=device,
                                     total_steps=steps_per_epoch(len(samples), cfg) * (args.repeats + 2))
        stage = StageConfig.from_preprocess(self.learner.preprocess, image_aug=False, text_aug=False)
        images, skipped = decode_samples(samples, stage)
        assert not skipped, skipped
        b = args.batch_size
        self.batches = [{IMAGE: np.stack(images[i : i + b]),
                         CAPTION: np.array([s[CAPTIONS][0] for s in samples[i : i + b]], dtype=object)}
                        for i in range(0, len(samples) - b + 1, b)]

    def warm(self) -> None:
        from rsclip.train.loop import train_step

        train_step(self.learner, self.batches[:1])

    def __call__(self) -> float:
        from rsclip.train.config import TrainState
        from rsclip.train.loop import run_epoch

        return float(run_epoch(self.learner, self.batches, TrainState())["train_samples_per_s"])


class RayFits:
    """Samples/s of the second epoch of a fresh Ray Train fit with ``workers`` workers."""

    def __init__(self, args, model_dir: Path, samples: list[dict], val: list[dict], work: Path):
        self.args, self.model_dir, self.samples, self.val, self.work = args, model_dir, samples, val, work
        self.fits = 0

    def __call__(self, workers: int) -> float:
        from rsclip.train.data import class_names
        from rsclip.train.driver import build_trainer
        from rsclip.train.loop import steps_per_epoch
        from rsclip.train.transforms import StageConfig, build_dataset

        self.fits += 1
        output = self.work / f"ray{workers}-{self.fits}"
        cfg = train_config(self.args, self.model_dir, str(output), workers)
        try:
            from rsclip.model.preprocess import ImagePreprocess
            from transformers import AutoImageProcessor

            preprocess = ImagePreprocess.from_processor(AutoImageProcessor.from_pretrained(self.model_dir))
            val_stage = StageConfig.from_preprocess(preprocess, image_aug=False, text_aug=False, keep_captions=True)
            trainer = build_trainer(cfg, self.samples, build_dataset(self.val, val_stage, num_cpus=DATA_CPUS),
                                    total_steps=steps_per_epoch(len(self.samples), cfg) * EPOCHS,
                                    classes=class_names(self.val))
            return float(trainer.fit().metrics["train_samples_per_s"])
        finally:  # each fit checkpoints the model and its optimiser state: a few GB for ViT-B/32
            shutil.rmtree(output, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--model-size", choices=("vitb32", "tiny"), default="vitb32")
    p.add_argument("--batch-size", type=int, default=16, help="per worker (default 16)")
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per epoch with one worker (default 10)")
    p.add_argument("--cpus", type=float, default=float(common.cpus()),
                   help="CPUs of the training: the plain loop's torch threads, the Ray workers' reservation")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--workers", default="1,2",
                   help="Ray Train worker counts to measure, comma-separated (default 1,2: ray_samples_s and "
                        "ray2_samples_s; make bench measures 1 only: two workers on two cores have no target)")
    args = p.parse_args(argv)
    workers = sorted({int(w) for w in args.workers.split(",")})
    if 1 not in workers or not set(workers) <= {1, 2}:
        p.error("--workers takes 1 or 1,2 (the ratio needs one worker)")
    bench = Bench("train", args, needs=[common.path_need(common.RSICD_IMAGES)]).start()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from infra.local_stack import RayHead
    from rsclip.runtime import cluster
    from rsclip.testing import build_tiny_clip, build_vit_b32
    from rsclip.train.data import read_samples

    samples = read_samples([str(common.RSICD)], split="train")[: args.batch_size * args.steps]
    val = read_samples([str(common.RSICD)], split="val")[:VAL_SAMPLES]
    with tempfile.TemporaryDirectory(prefix="rsclip-bench-train-") as tmp:
        work = Path(tmp)
        model_dir = (build_vit_b32 if args.model_size == "vitb32" else build_tiny_clip)(work / "model")
        plain = PlainLoop(args, model_dir, samples)
        fits = RayFits(args, model_dir, samples, val, work)
        # one local cluster for every fit (each fit starts its own worker processes); one logical CPU more
        # than the cores so the decode tasks run beside workers that reserve every core
        with RayHead(num_cpus=int(args.cpus) + 1) as head:
            cluster.start_ray(head.address, log_to_driver=False)
            bench.say(f"Ray Train fits: {EPOCHS} epochs each, the first is the fit's warm-up (discarded)")
            figures = bench.rounds([Arm("plain_samples_s", plain, warm=plain.warm)] + [
                Arm(RAY_KEYS[n], lambda n=n: fits(n), warm=common.NO_WARMUP) for n in workers])
            import ray

            ray.shutdown()
    bench.finish(figures, ratios={"ratio": ("ray_samples_s", "plain_samples_s")}, targets=TARGETS,
                 constants={"model_size": args.model_size, "batch_size": args.batch_size, "steps": args.steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
