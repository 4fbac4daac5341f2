"""The settings of a fine-tuning run (:class:`TrainConfig`) and where a run stands (:class:`TrainState`).

``TrainConfig`` is built once at the edge (``jobs/finetune.py``: flags generated from these fields by
:func:`rsclip.runtime.flags.add_arguments`, and/or a YAML/JSON file), crosses into Ray workers as a plain dict
(:meth:`TrainConfig.to_dict`) and is rebuilt there with :meth:`TrainConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from rsclip.runtime import flags, storage
from rsclip.model.sources import DEFAULT_MODEL, model_reference
from rsclip.errors import InvalidInput
from rsclip.train.data import TRAIN, VAL

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_CONFIG_BYTES = 1024 * 1024  # a settings file is a few hundred bytes
setting = flags.setting

IO, CLUSTER, OPTIM, DATA, CKPT = "data and output", "cluster", "optimisation", "augmentation", "checkpoints"


def _absolute(uri: str) -> str:
    """A local path made absolute (it may not exist yet: an output); ``s3://`` URIs and "" as they are."""
    if not isinstance(uri, str) or not uri or storage.is_remote(uri):
        return uri
    return os.path.abspath(storage.local_path(uri).expanduser())


@dataclass
class TrainConfig:
    """Settings of a fine-tuning run. ``batch_size`` is per worker; the global batch is ``batch_size *
    num_workers`` and all of it serves as negatives for every pair."""

    data: list[str] = setting(default_factory=list, group=IO, help="training data: an RSICD folder/JSON or a "
                              "Parquet/CSV/JSONL manifest, local or s3:// (repeatable)")
    output: str = setting("", group=IO, help="where checkpoints, metrics and the exported model go (local or s3://)")
    val_data: list[str] = setting(default_factory=list, group=IO,
                                  help="validation data (default: the val split of --data) (repeatable)")
    model: str = setting(DEFAULT_MODEL, group=IO, help="starting model: hub id, save_pretrained folder or s3:// prefix")
    train_split: str = setting(TRAIN, group=IO, help="split of --data to train on")
    val_split: str = setting(VAL, group=IO, help="split to validate on")
    num_workers: int = setting(1, group=CLUSTER, help="Ray Train workers (DDP ranks)")
    use_gpu: bool = setting(False, group=CLUSTER, help="one GPU per worker")
    cpus_per_worker: float = setting(1.0, group=CLUSTER, help="CPUs reserved per training worker")
    data_cpus: float = setting(0.5, group=CLUSTER, help="CPUs per decode/augment task")
    stall_timeout: float = setting(600.0, group=CLUSTER,
                                   help="seconds without progress before the run says on the console which stage "
                                        "is stuck, and again every as many seconds (0: never)")
    stall_abort: float = setting(3600.0, group=CLUSTER,
                                 help="seconds without progress after which the run stops with an error naming "
                                      "the stuck stage (0: never)")
    epochs: int = setting(10, group=OPTIM, help="passes over the training data")
    batch_size: int = setting(64, group=OPTIM,
                              help="per-worker batch; the global batch (all workers) gives the negatives")
    lr: float = setting(1e-5, group=OPTIM, help="peak learning rate (AdamW)")
    weight_decay: float = setting(0.2, group=OPTIM, help="AdamW weight decay (not on norms, biases, temperature)")
    betas: tuple[float, float] = setting((0.9, 0.98), group=OPTIM, help="AdamW betas (two numbers)")
    eps: float = setting(1e-6, group=OPTIM, help="AdamW epsilon")
    warmup_steps: int = setting(100, group=OPTIM, help="linear warmup steps before the cosine decay")
    grad_clip: float = setting(1.0, group=OPTIM, help="max gradient norm; 0 disables clipping")
    accum_steps: int = setting(1, group=OPTIM, help="micro-batches per optimiser step (gradient accumulation)")
    precision: str = setting("auto", group=OPTIM, choices=PRECISIONS,
                             help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), bf16, fp16 or fp32")
    freeze_image: bool = setting(False, group=OPTIM, help="freeze the image tower and its projection")
    freeze_text: bool = setting(False, group=OPTIM, help="freeze the text tower and its projection")
    max_steps: int = setting(0, group=OPTIM,
                             help="stop after N optimiser steps (with a checkpoint; continue later with --resume); "
                                  "0: no limit")
    seed: int = setting(0, group=OPTIM, help="seed of every random stream: torch, sample order, augmentation, "
                                             "caption choice, shuffle buffer")
    image_aug: bool = setting(True, group=DATA, help="random resized crop, flips, 90 degree turns, colour jitter")
    text_aug: bool = setting(True, group=DATA, help="a random caption of the image per visit (else the first)")
    shuffle_buffer: int = setting(256, group=DATA, help="rows in each worker's local shuffle buffer (0: none)")
    checkpoint_every_steps: int = setting(0, group=CKPT,
                                          help="also checkpoint every N optimiser steps (0: only each epoch)")
    keep_checkpoints: int = setting(2, group=CKPT, help="checkpoints kept (the best and the latest among them)")
    best_metric: str = setting("val_top1", group=CKPT,
                               help="validation metric that picks the best checkpoint (exported as OUTPUT/model)")
    max_failures: int = setting(3, group=CKPT, help="worker failures Ray Train recovers from (from a checkpoint)")
    resume: bool = setting(False, group=CKPT, help="continue the run in --output from its latest checkpoint")

    def __post_init__(self):
        # local paths absolute: the workers run in another folder, and the run's records are read from anywhere
        self.data = [_absolute(d) for d in ([self.data] if isinstance(self.data, str) else list(self.data or []))]
        self.val_data = [_absolute(d) for d in
                         ([self.val_data] if isinstance(self.val_data, str) else list(self.val_data or []))]
        self.output = _absolute(self.output)
        self.model = model_reference(self.model)
        self.betas = tuple(self.betas)

    def validate(self) -> "TrainConfig":
        """Raise :class:`InvalidInput` for inconsistent settings; return self."""
        if not self.data:
            raise InvalidInput("no training data: pass at least one --data URI")
        if not self.output:
            raise InvalidInput("no --output given")
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.freeze_image and self.freeze_text:
            raise InvalidInput("freezing both towers leaves nothing to train")
        for name in ("num_workers", "epochs", "batch_size", "accum_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1")
        for name in ("max_steps", "checkpoint_every_steps", "shuffle_buffer", "warmup_steps", "max_failures",
                     "stall_timeout", "stall_abort"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must not be negative")
        if self.cpus_per_worker < 0 or self.data_cpus <= 0:
            raise InvalidInput("cpus_per_worker must not be negative and data_cpus must be positive")
        if len(self.betas) != 2:
            raise InvalidInput(f"betas takes two values, got {self.betas}")
        if self.keep_checkpoints < 2 and self.checkpoint_every_steps:
            raise InvalidInput("keep_checkpoints must be >= 2 with step checkpoints (best and latest)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for Ray and JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict (``-`` or ``_`` in keys); raises :class:`InvalidInput` naming unknown keys and
        values of the wrong type."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InvalidInput(f"unknown training settings: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            _check_type(name, value, hints[name])
        return flags.build(cls, values)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Settings from a YAML or JSON file (local or ``s3://``), then ``overrides`` on top.

        Raises :class:`InvalidInput` (or ``NotFound``) for a missing, oversized or malformed file."""
        import yaml

        text = storage.read_bytes(str(path), max_bytes=MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
        try:
            values = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise InvalidInput(f"{path}: not a valid settings file ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise InvalidInput(f"{path}: expected a mapping of settings")
        return cls.from_dict({**values, **overrides})


def _check_type(name: str, value: Any, tp) -> None:
    """Raise :class:`InvalidInput` unless ``value`` fits the field type ``tp`` (as a config file writes it)."""
    origin = typing.get_origin(tp)
    if origin is list:
        ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
    elif origin is tuple:
        ok = isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = _is_number(value)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise InvalidInput(f"training setting {name}: {value!r} is not a valid {getattr(tp, '__name__', tp)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrainState:
    """Where training stands: saved in every checkpoint so a resumed run continues exactly here."""

    epoch: int = 0  # the epoch in progress (0-based)
    step: int = 0  # optimiser steps done
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed (the data position)
    samples_seen: int = 0
    history: list = field(default_factory=list)  # per-epoch metric records

    def reached(self, max_steps: int) -> bool:
        """True once ``max_steps`` (0: no limit) optimiser steps are done."""
        return bool(max_steps) and self.step >= max_steps
