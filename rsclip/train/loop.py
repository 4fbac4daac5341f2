"""Contrastive fine-tuning of CLIP with Ray Train (DDP), global negatives and per-epoch evaluation.

The pieces, in the order a run uses them:

1. :class:`TrainConfig` — every setting, typed, with its default; built once at the edge (``jobs/finetune.py``
   from flags and/or a YAML/JSON file), crossed into workers as a dict and rebuilt on their first line.
2. :func:`run` (driver) — reads the samples (:mod:`rsclip.data`), builds the Ray Data decode/augment
   pipelines, the :class:`ray.train.torch.TorchTrainer` (:func:`build_trainer`), fits, and exports the best
   checkpoint as ``OUTPUT/model/``.
3. :func:`train_loop_per_worker` — per worker: model (from the latest checkpoint when there is one), AdamW
   with warmup + cosine, the gathered InfoNCE loss (:mod:`rsclip.loss`), gradient accumulation and
   clipping, autocast on GPU, rank-0 evaluation (:mod:`rsclip.metrics`) and checkpoints every epoch and
   every N steps. Every rank calls ``ray.train.report`` at the same points; only rank 0 attaches a
   checkpoint.

Output layout (local path or ``s3://``)::

    OUTPUT/ray/run/checkpoint_*/   Ray Train checkpoints: a save_pretrained model + train_state.pt
    OUTPUT/metrics.jsonl           one record per epoch (train loss, val metrics, step, throughput)
    OUTPUT/metrics.png             loss, top-1 and mR per epoch
    OUTPUT/model/                  the best checkpoint's model: plain transformers / rsclip.load_model
    OUTPUT/summary.json            best epoch, its metrics, counts
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsclip.train import data as rdata
from rsclip.train import metrics as rmetrics
from rsclip.core import storage
from rsclip.train.loss import clamp_logit_scale_, contrastive_loss
from rsclip.core.model import DEFAULT_MODEL, ClipEncoder, ImagePreprocess, normalize_pixels, resolve_model_source

log = logging.getLogger(__name__)

RUN_NAME = "run"
STATE_FILE = "train_state.pt"
TRAIN_DATASET, VAL_DATASET = "train", "val"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Score given to mid-epoch checkpoints, which carry no validation: below any real metric, so the best
# checkpoint is always an evaluated one (the latest one is kept regardless, for resuming).
UNEVALUATED_SCORE = -1.0


@dataclass
class TrainConfig:
    """Settings of a fine-tuning run. ``batch_size`` is per worker; the global batch is ``batch_size *
    num_workers`` and all of it serves as negatives for every pair."""

    data: list[str] = field(default_factory=list)
    output: str = ""
    val_data: list[str] = field(default_factory=list)  # empty: the val split of ``data``
    model: str = DEFAULT_MODEL
    train_split: str = rdata.TRAIN
    val_split: str = rdata.VAL
    # cluster
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    data_cpus: float = 0.5  # per decode/augment task
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    accum_steps: int = 1
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on GPU, fp32 on CPU
    freeze_image: bool = False
    freeze_text: bool = False
    max_steps: int = 0  # stop (with a checkpoint) after this many optimiser steps; 0: no limit
    seed: int = 0
    # data
    image_aug: bool = True
    text_aug: bool = True
    shuffle_buffer: int = 256
    # checkpoints and evaluation
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    keep_checkpoints: int = 2
    best_metric: str = "val_top1"
    max_failures: int = 3
    resume: bool = False

    def __post_init__(self):
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)
        self.val_data = [self.val_data] if isinstance(self.val_data, str) else list(self.val_data or [])
        self.betas = tuple(self.betas)

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` for inconsistent settings; return self."""
        if not self.data:
            raise ValueError("no training data: pass at least one --data URI")
        if not self.output:
            raise ValueError("no --output given")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.freeze_image and self.freeze_text:
            raise ValueError("freezing both towers leaves nothing to train")
        for name in ("num_workers", "epochs", "batch_size", "accum_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.keep_checkpoints < 2 and self.checkpoint_every_steps:
            raise ValueError("keep_checkpoints must be >= 2 with step checkpoints (best and latest)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for Ray and JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; raises ``ValueError`` naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Settings from a YAML or JSON file (local or ``s3://``), then ``overrides`` on top."""
        import yaml

        fs, p = storage.filesystem(str(path))
        with fs.open(p, "rb") as f:
            text = f.read().decode()
        values = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        return cls.from_dict({**values, **overrides})


@dataclass
class TrainState:
    """Where training stands: saved in every checkpoint so a resumed run continues exactly here."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimiser steps done
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed (the data position)
    samples_seen: int = 0
    history: list = field(default_factory=list)  # per-epoch metric records


# ---------------------------------------------------------------- optimisation


def _frozen(name: str, cfg: TrainConfig) -> bool:
    if cfg.freeze_image and name.startswith(("vision_model.", "visual_projection.")):
        return True
    return cfg.freeze_text and name.startswith(("text_model.", "text_projection."))


def freeze_towers(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Turn off gradients of the image and/or text tower (backbone and projection) as ``cfg`` says."""
    for name, p in model.named_parameters():
        if _frozen(name, cfg):
            p.requires_grad_(False)


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # open_clip's rule: norms (ln/bn), biases, the temperature and any other 1-d parameter
    return p.ndim < 2 or "bias" in name or "norm" in name or "logit_scale" in name


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on norms, biases and the temperature."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` (and 0 after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """A ``LambdaLR`` applying :func:`lr_factor`."""
    warmup = min(cfg.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total_steps))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.precision`` on ``device`` (``None``: full precision)."""
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    if cfg.precision == "fp16":
        return torch.float16
    if cfg.precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def steps_per_epoch(n_samples: int, cfg: TrainConfig) -> int:
    """Optimiser steps per epoch: each worker gets ``n // workers`` rows in ``batch_size`` micro-batches."""
    per_worker = n_samples // cfg.num_workers
    micro = math.ceil(per_worker / cfg.batch_size)
    return max(1, math.ceil(micro / cfg.accum_steps))


def clip_batch_loss(model, batch: dict[str, np.ndarray], tokenizer, preprocess: ImagePreprocess,
                    device: torch.device, amp_dtype: torch.dtype | None, max_length: int) -> torch.Tensor:
    """The gathered contrastive loss of one decoded batch (``image`` uint8 ``(B, S, S, 3)``, ``caption``)."""
    pixels = normalize_pixels(batch[rdata.IMAGE], preprocess, device, channels_last=True)  # (B, 3, S, S)
    tokens = tokenizer([str(c) for c in batch[rdata.CAPTION]], padding=True, truncation=True,
                       max_length=max_length, return_tensors="pt").to(device)
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    with ctx:
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    core = model.module if hasattr(model, "module") else model
    return contrastive_loss(out.image_embeds, out.text_embeds, core.logit_scale)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint_dir(path: Path, model, tokenizer, processor, optimizer, scheduler, scaler,
                        state: TrainState) -> Path:
    """Write a checkpoint folder: a ``save_pretrained`` model (usable as is) plus ``train_state.pt``."""
    core = model.module if hasattr(model, "module") else model
    core.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    torch.save({
        "state": dataclasses.asdict(state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
    }, path / STATE_FILE)
    return path


def load_train_state(path: Path) -> dict[str, Any]:
    """The ``train_state.pt`` of a checkpoint folder (tensors and plain types only)."""
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- the worker


def _all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _val_rows(shard) -> tuple[list[np.ndarray], list[list[str]], list[str], int]:
    images, captions, labels, skipped = [], [], [], 0
    for batch in shard.iter_batches(batch_size=64, batch_format="numpy"):
        for i, ok in enumerate(batch[rdata.OK]):
            if not ok:
                skipped += 1
                continue
            images.append(batch[rdata.IMAGE][i])
            captions.append(json.loads(batch[rdata.CAPTIONS][i]))
            labels.append(str(batch[rdata.LABEL][i]))
    return images, captions, labels, skipped


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; ``config`` is ``{"train": TrainConfig.to_dict(), "total_steps":
    int, "classes": [...]}``."""
    import ray.train
    import ray.train.torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    cfg = TrainConfig.from_dict(config["train"])
    total_steps = int(config["total_steps"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)

    checkpoint = ray.train.get_checkpoint()
    # each rank fetches its own copy: ``as_directory`` shares one download folder per node, and a rank
    # can read a file another rank on the same node is still writing
    with tempfile.TemporaryDirectory(prefix=f"rsclip-resume-{rank}-") as tmp:
        ckpt_dir = Path(checkpoint.to_directory(tmp)) if checkpoint else None
        source = ckpt_dir or Path(resolve_model_source(cfg.model))
        model = CLIPModel.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
        saved = load_train_state(ckpt_dir) if ckpt_dir else None
    preprocess = ImagePreprocess.from_processor(processor)
    max_length = int(model.config.text_config.max_position_embeddings)
    freeze_towers(model, cfg)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    amp_dtype = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    state = TrainState()
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = TrainState(**saved["state"])
        # printed, not logged: Ray forwards worker stdout to the job's log whatever the logging setup
        print(f"rsclip: rank {rank} resumed at epoch {state.epoch}, step {state.step}, "
              f"batch {state.batch_in_epoch}", flush=True)
    model = ray.train.torch.prepare_model(model, move_to_device=False)
    core = model.module if hasattr(model, "module") else model
    train_shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    val_shard = ray.train.get_dataset_shard(VAL_DATASET) if rank == 0 else None
    val_cache: tuple | None = None
    score_key = cfg.best_metric

    def report(metrics: dict[str, Any], evaluated: bool) -> None:
        metrics = {**metrics, "epoch_in_progress": state.epoch, "step": state.step}
        metrics.setdefault(score_key, UNEVALUATED_SCORE)
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="rsclip-ckpt-") as tmp:
            save_checkpoint_dir(Path(tmp), model, tokenizer, processor, optimizer, scheduler, scaler, state)
            name = f"epoch{state.epoch:04d}-step{state.step:07d}" + ("" if evaluated else "-partial")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name)

    stop = False
    while state.epoch < cfg.epochs and not stop:
        model.train()
        skip = state.batch_in_epoch
        loss_sum, loss_n, bad, epoch_samples, train_time = 0.0, 0, 0, 0, 0.0
        batches = iter(train_shard.iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2,
            local_shuffle_buffer_size=cfg.shuffle_buffer or None,
        ))
        micro = 0
        t0 = time.perf_counter()
        while True:
            batch = next(batches, None)
            if batch is not None:
                keep = np.asarray(batch[rdata.OK], dtype=bool)
                bad += int((~keep).sum())
                batch = {k: v[keep] for k, v in batch.items()}
            n_local = 0 if batch is None else len(batch[rdata.CAPTION])
            # every rank must take the same path through the collectives: continue only while all have
            # data, and skip a micro-batch that is empty on any rank (all its images unreadable)
            alive, n_min = _all_reduce([float(batch is not None), float(n_local)], device,
                                       op=_min_op())
            if not alive:
                break
            micro += 1
            if micro <= skip:  # resuming mid-epoch: these micro-batches were trained on before the stop
                continue
            if n_min == 0:
                continue
            boundary = (micro % cfg.accum_steps == 0)
            sync = model.no_sync() if (hasattr(model, "no_sync") and not boundary) else nullcontext()
            with sync:
                loss = clip_batch_loss(model, batch, tokenizer, preprocess, device, amp_dtype, max_length)
                scaled = loss / cfg.accum_steps
                (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += float(loss.detach())
            loss_n += 1
            epoch_samples += n_local
            state.samples_seen += n_local
            state.batch_in_epoch = micro
            if boundary:
                _optimizer_step(model, optimizer, scheduler, scaler, cfg)
                clamp_logit_scale_(core.logit_scale)
                state.step += 1
                if cfg.max_steps and state.step >= cfg.max_steps:
                    stop = True
                if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0 or stop:
                    train_time += time.perf_counter() - t0
                    report({"train_loss_running": loss_sum / max(loss_n, 1)}, evaluated=False)
                    t0 = time.perf_counter()
                if stop:
                    break
        if micro % cfg.accum_steps and not stop:  # a last partial accumulation still updates
            _optimizer_step(model, optimizer, scheduler, scaler, cfg)
            clamp_logit_scale_(core.logit_scale)
            state.step += 1
        train_time += time.perf_counter() - t0
        if stop:
            break
        loss_sum, loss_n, bad, epoch_samples = _all_reduce(
            [loss_sum, float(loss_n), float(bad), float(epoch_samples)], device)
        record: dict[str, Any] = {
            "epoch": state.epoch + 1, "step": state.step, "train_loss": loss_sum / max(loss_n, 1),
            "train_samples": int(epoch_samples), "skipped_images": int(bad),
            "train_samples_per_s": epoch_samples / max(train_time, 1e-9),
            "lr": scheduler.get_last_lr()[0], "temperature": float(1.0 / core.logit_scale.detach().exp()),
        }
        if rank == 0:
            if val_cache is None:
                val_cache = _val_rows(val_shard)
            images, captions, labels, val_bad = val_cache
            encoder = ClipEncoder(core, tokenizer, preprocess, source=cfg.model, device=str(device))
            if images:
                record.update({f"val_{k}": v for k, v in rmetrics.evaluate(
                    encoder, images, captions, labels, classes=config.get("classes")).items()})
            record["val_skipped_images"] = val_bad
            model.train()
        state.epoch += 1
        state.batch_in_epoch = 0
        if rank == 0:
            state.history.append(record)
            rmetrics.write_history(f"{cfg.output}/metrics.jsonl", state.history)
            rmetrics.plot_history(f"{cfg.output}/metrics.png", state.history)
            print(f"rsclip: epoch {record['epoch']}: {json.dumps(record)}", flush=True)
        score = record.get(score_key)
        report({**record, score_key: UNEVALUATED_SCORE if score is None else score}, evaluated=True)


def _min_op():
    import torch.distributed as dist

    return dist.ReduceOp.MIN


def _optimizer_step(model, optimizer, scheduler, scaler, cfg: TrainConfig) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- the driver


def run_dir_exists(output: str) -> bool:
    """Whether ``OUTPUT/ray/run`` already holds a Ray Train run (so a fresh start would clash)."""
    fs, path = storage.filesystem(f"{output.rstrip('/')}/ray/{RUN_NAME}")
    return fs.exists(path) and bool(fs.ls(path))


def check_output(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` when ``cfg.output`` already holds a run and ``cfg.resume`` is not set."""
    if run_dir_exists(cfg.output) and not cfg.resume:
        raise ValueError(f"{cfg.output} already holds a training run: pass --resume to continue it, "
                         "or choose another --output")


def build_trainer(cfg: TrainConfig, train_ds, val_ds, *, total_steps: int, classes: list[str]):
    """The ``TorchTrainer``: scaling, storage under ``OUTPUT/ray``, failure and checkpoint policy."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, path = storage.arrow_filesystem(f"{cfg.output.rstrip('/')}/ray")
    if not storage.is_remote(cfg.output):
        Path(path).mkdir(parents=True, exist_ok=True)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.to_dict(), "total_steps": total_steps, "classes": classes},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.best_metric,
                                               checkpoint_score_order="max"),
        ),
        datasets={TRAIN_DATASET: train_ds, VAL_DATASET: val_ds},
        dataset_config=DataConfig(datasets_to_split=[TRAIN_DATASET]),
    )


def _model_preprocess(source: str) -> ImagePreprocess:
    from transformers import AutoImageProcessor

    return ImagePreprocess.from_processor(AutoImageProcessor.from_pretrained(resolve_model_source(source)))


def export_model(checkpoint, output: str) -> str:
    """Copy a checkpoint's model (not its optimiser state) to ``OUTPUT/model/``; returns that URI."""
    target = f"{output.rstrip('/')}/model"
    fs, path = storage.filesystem(target)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    with checkpoint.as_directory() as src:
        files = [p for p in Path(src).iterdir() if p.is_file() and p.name != STATE_FILE]
        if not storage.is_remote(target):
            Path(path).mkdir(parents=True, exist_ok=True)
        for f in files:
            fs.put_file(str(f), f"{path}/{f.name}")
    return target


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says on the connected Ray cluster; returns the summary also written to
    ``OUTPUT/summary.json``.

    Raises ``ValueError`` for bad settings, missing data, or an output that already holds a run when
    ``resume`` is not set. With ``resume`` and an existing run, Ray Train restores it and training
    continues from its latest checkpoint (same step, optimiser, scheduler and data position).
    """
    check_output(cfg.validate())
    train = rdata.read_samples(cfg.data, split=cfg.train_split)
    val = rdata.read_samples(cfg.val_data or cfg.data, split=cfg.val_split)
    if cfg.val_data and not val:  # a dedicated validation source without split labels is all validation
        val = rdata.read_samples(cfg.val_data)
    if not train:
        raise ValueError(f"no '{cfg.train_split}' samples with captions in {cfg.data}")
    if not val:
        raise ValueError(f"no '{cfg.val_split}' samples in {cfg.val_data or cfg.data} to validate on")
    preprocess = _model_preprocess(cfg.model)
    train_stage = rdata.StageConfig.from_preprocess(preprocess, image_aug=cfg.image_aug, text_aug=cfg.text_aug)
    val_stage = rdata.StageConfig.from_preprocess(preprocess, image_aug=False, text_aug=False, keep_captions=True)
    train_ds = rdata.build_dataset(train, train_stage, num_cpus=cfg.data_cpus)
    val_ds = rdata.build_dataset(val, val_stage, num_cpus=cfg.data_cpus)
    # the schedule spans all epochs even when max_steps stops early, so a resumed run continues it unchanged
    total = steps_per_epoch(len(train), cfg) * cfg.epochs
    classes = rdata.class_names(val)
    trainer = build_trainer(cfg, train_ds, val_ds, total_steps=total, classes=classes)
    result = trainer.fit()
    best = _best_checkpoint(result, cfg.best_metric)
    summary: dict[str, Any] = {
        "output": cfg.output, "train_samples": len(train), "val_samples": len(val),
        "classes": len(classes), "total_steps_planned": total,
        "final_metrics": _plain(result.metrics), "config": cfg.to_dict(),
    }
    if best is not None:
        ckpt, m = best
        summary["model"] = export_model(ckpt, cfg.output)
        summary["best_metrics"] = _plain(m)
        summary["best_checkpoint"] = ckpt.path
    rmetrics.write_text(f"{cfg.output.rstrip('/')}/summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _plain(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}


def _best_checkpoint(result, key: str):
    candidates = list(getattr(result, "best_checkpoints", None) or [])
    if not candidates and result.checkpoint is not None:
        return result.checkpoint, result.metrics or {}
    if not candidates:
        return None
    return max(candidates, key=lambda cm: (cm[1].get(key, UNEVALUATED_SCORE), cm[1].get("step", 0)))
