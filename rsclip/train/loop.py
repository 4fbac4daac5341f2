"""The training loop on plain torch: one optimiser step, one epoch, validation and checkpoints, no Ray.

Everything here takes a :class:`Learner` (a CLIP model with its tokenizer, optimiser, scheduler and
precision) and batches as dicts, the decode stage's rows (:mod:`rsclip.train.transforms`): ``image`` uint8
``(B, S, S, 3)``, ``caption`` strings and, optionally, ``ok`` flags. :mod:`rsclip.train.driver` runs the same
functions in Ray Train workers; under DDP (an initialised ``torch.distributed`` group) :func:`run_epoch`
keeps the ranks in step and sums their statistics, and the loss gathers every rank's pairs as negatives.

    learner = build_learner(*load_clip(folder), cfg, device=torch.device("cpu"), total_steps=100)
    loss = train_step(learner, [batch])                        # one optimiser step
    record = run_epoch(learner, batches, TrainState())         # one epoch
    record.update(validate(learner, collect_val_rows(val_batches)))
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from rsclip.model.clip import ClipEncoder, ImagePreprocess, normalize_pixels
from rsclip.errors import InvalidInput
from rsclip.train import metrics
from rsclip.train.config import TrainConfig, TrainState
from rsclip.train.data import CAPTION, CAPTIONS, IMAGE, LABEL, OK
from rsclip.train.loss import clamp_logit_scale_, contrastive_loss

STATE_FILE = "train_state.pt"
VAL_BATCH = 64

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


# ---------------------------------------------------------------- the learner


@dataclass
class Learner:
    """A CLIP model and everything that updates it: what :func:`train_step` and :func:`run_epoch` need.

    ``model`` is the module stepped (wrapped in DDP under Ray Train; :attr:`core` is the CLIP model inside);
    ``processor`` is the Hugging Face image processor saved with checkpoints. :func:`build_learner` makes one.
    """

    model: torch.nn.Module
    tokenizer: Any
    processor: Any
    preprocess: ImagePreprocess
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: Any = None  # a GradScaler for fp16 autocast
    max_length: int = 77  # tokens per caption

    @property
    def core(self) -> torch.nn.Module:
        """The CLIP model itself (inside a DDP wrapper, when there is one)."""
        return getattr(self.model, "module", self.model)


def load_clip(source: str | Path) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, tokenizer, image processor)`` of a ``save_pretrained`` folder or hub id (float32, safetensors)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(source), AutoImageProcessor.from_pretrained(source)


def build_learner(model: torch.nn.Module, tokenizer, processor, cfg: TrainConfig, *, device: torch.device,
                  total_steps: int) -> Learner:
    """Freeze towers as ``cfg`` says, move ``model`` to ``device``, build AdamW, the warmup+cosine schedule over
    ``total_steps``, the autocast dtype and (fp16 only) a gradient scaler."""
    freeze_towers(model, cfg)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    amp_dtype = autocast_dtype(cfg, device)
    return Learner(
        model=model, tokenizer=tokenizer, processor=processor,
        preprocess=ImagePreprocess.from_processor(processor), optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg, total_steps), cfg=cfg, device=device, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        max_length=int(model.config.text_config.max_position_embeddings),
    )


# ---------------------------------------------------------------- one step


def clip_batch_loss(learner: Learner, batch: Mapping[str, np.ndarray]) -> torch.Tensor:
    """The gathered contrastive loss of one decoded batch (``image`` uint8 ``(B, S, S, 3)``, ``caption``)."""
    pixels = normalize_pixels(batch[IMAGE], learner.preprocess, learner.device, channels_last=True)  # (B, 3, S, S)
    tokens = learner.tokenizer([str(c) for c in batch[CAPTION]], padding=True, truncation=True,
                               max_length=learner.max_length, return_tensors="pt").to(learner.device)
    autocast = torch.autocast(learner.device.type, dtype=learner.amp_dtype) if learner.amp_dtype else nullcontext()
    with autocast:
        out = learner.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                            pixel_values=pixels)
    return contrastive_loss(out.image_embeds, out.text_embeds, learner.core.logit_scale)


def train_step(learner: Learner, batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    """One optimiser step over ``batches``, its micro-batches (gradient accumulation); returns their mean loss.

    Each micro-batch's loss is scaled by ``1 / len(batches)`` (and by the fp16 gradient scaler) before its
    backward pass; under DDP the gradients are all-reduced once, with the last micro-batch. Then the
    gradients are clipped to ``cfg.grad_clip``, the optimiser and the scheduler step, the gradients are
    cleared and the temperature is clamped. Raises :class:`InvalidInput` for no batches.
    """
    if not batches:
        raise InvalidInput("an optimiser step needs at least one micro-batch")
    scaler, total = learner.scaler, 0.0
    for i, batch in enumerate(batches):
        accumulate = i < len(batches) - 1 and hasattr(learner.model, "no_sync")
        with learner.model.no_sync() if accumulate else nullcontext():
            loss = clip_batch_loss(learner, batch)
            scaled = loss / len(batches)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += float(loss.detach())
    _apply_gradients(learner)
    return total / len(batches)


def _apply_gradients(learner: Learner) -> None:
    optimizer, scaler = learner.optimizer, learner.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if learner.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in learner.model.parameters() if p.requires_grad],
                                       learner.cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    learner.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale_(learner.core.logit_scale)


# ---------------------------------------------------------------- one epoch


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """``values`` summed (or their minimum) over the ranks; unchanged without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return t.tolist()


@dataclass
class _Tally:
    loss_sum: float = 0.0
    loss_n: int = 0
    bad: int = 0  # unreadable images dropped
    samples: int = 0
    paused: float = 0.0  # seconds spent in checkpoint callbacks, not training


def _agreed_batches(batches: Iterable[Mapping[str, np.ndarray]], device: torch.device,
                    tally: _Tally) -> Iterator[dict | None]:
    """This rank's micro-batches without their unreadable rows, in step with the other ranks.

    Every rank must take the same path through the collectives: the iteration ends as soon as any rank has
    no batch left, and a micro-batch that is empty on any rank (all its images unreadable) comes as None.
    """
    it = iter(batches)
    while True:
        batch = next(it, None)
        if batch is not None:
            keep = np.asarray(batch[OK], dtype=bool) if OK in batch else np.ones(len(batch[CAPTION]), dtype=bool)
            tally.bad += int((~keep).sum())
            batch = {k: np.asarray(v)[keep] for k, v in batch.items()}
        n_local = 0 if batch is None else len(batch[CAPTION])
        alive, n_min = _all_reduce([float(batch is not None), float(n_local)], device, op="min")
        if not alive:
            return
        yield batch if n_min > 0 else None


def checkpoint_due(state: TrainState, cfg: TrainConfig) -> bool:
    """Whether a step checkpoint is due after the step just done: every ``checkpoint_every_steps``, and when
    ``max_steps`` is reached."""
    every = cfg.checkpoint_every_steps
    return bool(every and state.step % every == 0) or state.reached(cfg.max_steps)


def _step(learner: Learner, group: list, state: TrainState, tally: _Tally,
          on_checkpoint: Callable[[float], None] | None) -> None:
    loss = train_step(learner, group)
    tally.loss_sum += loss * len(group)
    tally.loss_n += len(group)
    state.step += 1
    if on_checkpoint is not None and checkpoint_due(state, learner.cfg):
        start = time.perf_counter()
        on_checkpoint(tally.loss_sum / tally.loss_n)
        tally.paused += time.perf_counter() - start


def run_epoch(learner: Learner, batches: Iterable[Mapping[str, np.ndarray]], state: TrainState, *,
              on_checkpoint: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Train on one epoch's micro-batches (this rank's, from the epoch's start) and return its record.

    The first ``state.batch_in_epoch`` micro-batches are skipped (trained on before a stop); every
    ``cfg.accum_steps`` make one :func:`train_step`, a last partial group one more. ``on_checkpoint(running
    loss)`` is called after each step a checkpoint is due (:func:`checkpoint_due`); the epoch ends early
    when ``cfg.max_steps`` is reached. Updates ``state.step``, ``batch_in_epoch`` and ``samples_seen`` (the
    caller moves ``state.epoch`` on). The record (summed over ranks): ``epoch`` (1-based), ``step``,
    ``train_loss``, ``train_samples``, ``skipped_images``, ``train_samples_per_s``, ``lr``, ``temperature``.
    """
    cfg, tally, skip = learner.cfg, _Tally(), state.batch_in_epoch
    learner.model.train()
    group: list = []
    micro, start = 0, time.perf_counter()
    for batch in _agreed_batches(batches, learner.device, tally):
        micro += 1
        if micro <= skip:  # resuming mid-epoch: these were trained on before the stop
            continue
        if batch is not None:
            group.append(batch)
            tally.samples += len(batch[CAPTION])
            state.samples_seen += len(batch[CAPTION])
        if micro % cfg.accum_steps == 0 and group:
            state.batch_in_epoch = micro
            _step(learner, group, state, tally, on_checkpoint)
            group = []
            if state.reached(cfg.max_steps):
                break
    if group and not state.reached(cfg.max_steps):  # a last partial accumulation still updates
        state.batch_in_epoch = micro
        _step(learner, group, state, tally, None)
    seconds = time.perf_counter() - start - tally.paused
    loss_sum, loss_n, bad, samples = _all_reduce(
        [tally.loss_sum, float(tally.loss_n), float(tally.bad), float(tally.samples)], learner.device)
    return {
        "epoch": state.epoch + 1, "step": state.step, "train_loss": loss_sum / max(loss_n, 1),
        "train_samples": int(samples), "skipped_images": int(bad),
        "train_samples_per_s": samples / max(seconds, 1e-9), "lr": learner.scheduler.get_last_lr()[0],
        "temperature": float(1.0 / learner.core.logit_scale.detach().exp()),
    }


# ---------------------------------------------------------------- validation


class ValRows(NamedTuple):
    """Decoded validation images with their captions and labels, and how many were unreadable."""

    images: list[np.ndarray]
    captions: list[list[str]]
    labels: list[str]
    skipped: int


def collect_val_rows(batches: Iterable[Mapping[str, np.ndarray]]) -> ValRows:
    """The rows of decoded validation batches (built with ``keep_captions``: ``captions`` as JSON)."""
    images, captions, labels, skipped = [], [], [], 0
    for batch in batches:
        for i, ok in enumerate(batch[OK]):
            if not ok:
                skipped += 1
                continue
            images.append(batch[IMAGE][i])
            captions.append(json.loads(batch[CAPTIONS][i]))
            labels.append(str(batch[LABEL][i]))
    return ValRows(images, captions, labels, skipped)


def validate(learner: Learner, rows: ValRows, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`rsclip.train.metrics.evaluate` of the learner's model on ``rows``, keys prefixed ``val_``, plus
    ``val_skipped_images``. The model is back in training mode afterwards."""
    out: dict[str, Any] = {}
    if rows.images:
        encoder = ClipEncoder(learner.core, learner.tokenizer, learner.preprocess, source=learner.cfg.model,
                              device=str(learner.device))
        found = metrics.evaluate(encoder, rows.images, rows.captions, rows.labels, classes=classes)
        out.update({f"val_{k}": v for k, v in found.items()})
    out["val_skipped_images"] = rows.skipped
    learner.model.train()
    return out


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, learner: Learner, state: TrainState) -> Path:
    """Write a checkpoint folder: a ``save_pretrained`` model (usable as is) plus ``train_state.pt``."""
    learner.core.save_pretrained(path, safe_serialization=True)
    learner.tokenizer.save_pretrained(path)
    learner.processor.save_pretrained(path)
    torch.save({
        "state": dataclasses.asdict(state),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "scaler": learner.scaler.state_dict() if learner.scaler is not None else None,
    }, path / STATE_FILE)
    return path


def resume(learner: Learner, path: Path) -> TrainState:
    """Load the optimiser, scheduler and scaler state of the checkpoint folder ``path`` into ``learner`` (whose
    model was loaded from the same folder) and return where training stood.

    Only tensors and plain types are unpickled. Raises :class:`InvalidInput` for a folder that is not an rsclip
    training checkpoint."""
    try:
        saved = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        learner.optimizer.load_state_dict(saved["optimizer"])
        learner.scheduler.load_state_dict(saved["scheduler"])
        if learner.scaler is not None and saved.get("scaler"):
            learner.scaler.load_state_dict(saved["scaler"])
        return TrainState(**saved["state"])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, RuntimeError,
            AttributeError) as exc:
        raise InvalidInput(f"{path} is not an rsclip training checkpoint: {type(exc).__name__}: {exc}") from None
