"""Fine-tuning on a Ray cluster: the driver, Ray Train's per-worker function, and the export of the best model.

1. :func:`run` (driver) reads the samples (:mod:`rsclip.train.data`), builds the validation dataset and the
   :class:`ray.train.torch.TorchTrainer` (:func:`build_trainer`), fits, and exports the best checkpoint as
   ``OUTPUT/model`` (:func:`export_model`).
2. :func:`train_loop_per_worker` builds a :class:`~rsclip.train.loop.Learner` (from the latest checkpoint
   when there is one) and, per epoch, decodes this rank's share of the samples with that epoch's random
   views (:func:`~rsclip.train.transforms.epoch_shard`, :func:`~rsclip.train.transforms.build_dataset`) into
   :func:`~rsclip.train.loop.run_epoch`; rank 0 validates (:func:`~rsclip.train.loop.validate`). Every rank
   reports at the same points; only rank 0 attaches a checkpoint. The Ray Train controller prints
   ``rsclip: checkpoint NAME registered`` once a checkpoint is registered (resumable from).

Output layout (local path or ``s3://``)::

    OUTPUT/ray/run/epoch*-step*/   Ray Train checkpoints: a save_pretrained model + train_state.pt
    OUTPUT/metrics.jsonl           one record per epoch (train loss, val metrics, step, throughput)
    OUTPUT/metrics.png             loss, top-1 and mR per epoch
    OUTPUT/model                   the best checkpoint's model (plain transformers / rsclip.load_model),
                                   replaced atomically (:mod:`rsclip.model.versions`)
    OUTPUT/summary.json            best epoch, its metrics, counts
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from rsclip.model import versions
from rsclip.runtime import cluster, storage
from rsclip.runtime.watchdog import Watchdog
from rsclip.model.clip import ImagePreprocess, resolve_model_source
from rsclip.errors import InvalidInput
from rsclip.train import metrics
from rsclip.train.config import TrainConfig, TrainState
from rsclip.train.data import class_names, read_samples
from rsclip.train.loop import (STATE_FILE, VAL_BATCH, Learner, build_learner, collect_val_rows, load_clip, resume,
                               run_epoch, save_checkpoint, steps_per_epoch, validate)
from rsclip.train.seeds import SHUFFLE, TORCH, stream_seed
from rsclip.train.transforms import StageConfig, build_dataset, epoch_shard

RUN_NAME = "run"
VAL_DATASET = "val"
# Score given to mid-epoch checkpoints, which carry no validation: below any real metric, so the best
# checkpoint is always an evaluated one (the latest one is kept regardless, for resuming).
UNEVALUATED_SCORE = -1.0
# Keys of the per-worker config.
CONFIG, TOTAL_STEPS, CLASSES, SAMPLES = "train", "total_steps", "classes", "samples"
REGISTERED = "rsclip: checkpoint {name} registered"  # printed by the controller; tests wait for it
# The flags that size what a run asks of the cluster.
RESOURCE_FLAGS = "--num-workers, --cpus-per-worker, --use-gpu or --data-cpus"


def cluster_demand(cfg: TrainConfig) -> cluster.Demand:
    """What a run holds at once: its Ray Train workers, and one decode task beside them (else no data flows)."""
    worker = {"CPU": cfg.cpus_per_worker, **({"GPU": 1.0} if cfg.use_gpu else {})}
    return cluster.Demand("train workers", cfg.num_workers, worker, "decode task", {"CPU": cfg.data_cpus},
                          RESOURCE_FLAGS)


def run_dir_exists(output: str) -> bool:
    """Whether ``OUTPUT/ray/run`` already holds a Ray Train run (so a fresh start would clash)."""
    fs, path = storage.filesystem(f"{output.rstrip('/')}/ray/{RUN_NAME}")
    return fs.exists(path) and bool(fs.ls(path))


def check_output(cfg: TrainConfig) -> None:
    """Raise :class:`InvalidInput` when ``cfg.output`` already holds a run and ``cfg.resume`` is not set."""
    if run_dir_exists(cfg.output) and not cfg.resume:
        raise InvalidInput(f"{cfg.output} already holds a training run: pass --resume to continue it, "
                           "or choose another --output")


# ---------------------------------------------------------------- the worker


def checkpoint_name(state: TrainState, evaluated: bool) -> str:
    """The folder name of a checkpoint taken at ``state`` (``-partial``: mid-epoch, without validation)."""
    return f"epoch{state.epoch:04d}-step{state.step:07d}" + ("" if evaluated else "-partial")


def _start_worker(cfg: TrainConfig, rank: int, total_steps: int) -> tuple[Learner, TrainState]:
    """This rank's learner and state: from Ray Train's latest checkpoint when there is one, else from
    ``cfg.model``; the model is wrapped for DDP."""
    import ray.train
    import ray.train.torch

    torch.manual_seed(stream_seed(cfg.seed, TORCH, rank))
    checkpoint = ray.train.get_checkpoint()
    # each rank fetches its own copy: ``as_directory`` shares one download folder per node, and a rank
    # can read a file another rank on the same node is still writing
    with tempfile.TemporaryDirectory(prefix=f"rsclip-resume-{rank}-") as tmp:
        folder = Path(checkpoint.to_directory(tmp)) if checkpoint else None
        source = folder or resolve_model_source(cfg.model)
        learner = build_learner(*load_clip(source), cfg, device=ray.train.torch.get_device(),
                                total_steps=total_steps)
        state = resume(learner, folder) if folder else TrainState()
    if folder:
        # printed, not logged: Ray forwards worker stdout to the job's log whatever the logging setup
        print(f"rsclip: rank {rank} resumed at epoch {state.epoch}, step {state.step}, "
              f"batch {state.batch_in_epoch}", flush=True)
    learner.model = ray.train.torch.prepare_model(learner.model, move_to_device=False)
    return learner, state


def _epoch_batches(samples: Sequence[dict], stage: StageConfig, cfg: TrainConfig, epoch: int, rank: int,
                   world: int):
    """This rank's decoded micro-batches of ``epoch``: its share of the samples, with that epoch's views."""
    share = epoch_shard(samples, seed=cfg.seed, epoch=epoch, rank=rank, world=world)
    ds = build_dataset(share, stage.for_epoch(epoch), num_cpus=cfg.data_cpus)
    shuffle = cfg.shuffle_buffer or None
    return ds.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", prefetch_batches=2,
                           local_shuffle_buffer_size=shuffle,
                           local_shuffle_seed=stream_seed(cfg.seed, SHUFFLE, epoch, rank) if shuffle else None)


def _report(learner: Learner, state: TrainState, rank: int, record: dict[str, Any], *, evaluated: bool) -> None:
    """``ray.train.report`` on every rank; rank 0 attaches a checkpoint of ``state``."""
    import ray.train

    key = learner.cfg.best_metric
    record = {**record, "epoch_in_progress": state.epoch, "step": state.step}
    if record.get(key) is None:
        record[key] = UNEVALUATED_SCORE
    if rank != 0:
        ray.train.report(record, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="rsclip-ckpt-") as tmp:
        save_checkpoint(Path(tmp), learner, state)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_name(state, evaluated))


def _log_epoch(cfg: TrainConfig, state: TrainState, record: dict[str, Any]) -> None:
    state.history.append(record)
    metrics.write_history(f"{cfg.output}/metrics.jsonl", state.history)
    metrics.plot_history(f"{cfg.output}/metrics.png", state.history)
    print(f"rsclip: epoch {record['epoch']}: {json.dumps(record)}", flush=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function; ``config`` is ``{"train": TrainConfig.to_dict(), "total_steps": int,
    "classes": [...], "samples": ObjectRef of the training samples}``."""
    import ray
    import ray.train

    cfg = TrainConfig.from_dict(config[CONFIG])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    learner, state = _start_worker(cfg, rank, int(config[TOTAL_STEPS]))
    samples = ray.get(config[SAMPLES])
    stage = StageConfig.from_preprocess(learner.preprocess, image_aug=cfg.image_aug, text_aug=cfg.text_aug,
                                        seed=cfg.seed)
    val_rows = None
    while state.epoch < cfg.epochs:
        batches = _epoch_batches(samples, stage, cfg, state.epoch, rank, world)
        record = run_epoch(learner, batches, state, on_checkpoint=lambda loss: _report(
            learner, state, rank, {"train_loss_running": loss}, evaluated=False))
        if state.reached(cfg.max_steps):
            return
        if rank == 0:
            if val_rows is None:
                shard = ray.train.get_dataset_shard(VAL_DATASET)
                val_rows = collect_val_rows(shard.iter_batches(batch_size=VAL_BATCH, batch_format="numpy"))
            record.update(validate(learner, val_rows, classes=config[CLASSES]))
        state.epoch += 1
        state.batch_in_epoch = 0
        if rank == 0:
            _log_epoch(cfg, state, record)
        _report(learner, state, rank, record, evaluated=True)


# ---------------------------------------------------------------- the driver


def _registered_log():
    """A Ray Train callback (it runs in the controller) printing each registered checkpoint's name."""
    import ray.train

    class RegisteredLog(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is not None:
                print(REGISTERED.format(name=Path(checkpoint.path).name), flush=True)

    return RegisteredLog()


def build_trainer(cfg: TrainConfig, train_samples: Sequence[dict], val_ds, *, total_steps: int,
                  classes: list[str]):
    """The ``TorchTrainer``: scaling, storage under ``OUTPUT/ray``, failure and checkpoint policy. The training
    samples travel to the workers once, through the object store; each worker decodes its own share."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, path = storage.arrow_filesystem(f"{cfg.output.rstrip('/')}/ray")
    if not storage.is_remote(cfg.output):
        Path(path).mkdir(parents=True, exist_ok=True)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    loop_config = {CONFIG: cfg.to_dict(), TOTAL_STEPS: total_steps, CLASSES: classes,
                   SAMPLES: ray.put(list(train_samples))}
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs, callbacks=[_registered_log()],
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.best_metric,
                                               checkpoint_score_order="max"),
        ),
        datasets={VAL_DATASET: val_ds}, dataset_config=DataConfig(datasets_to_split=[]),
    )


def export_model(checkpoint, output: str) -> str:
    """Publish a checkpoint's model (not its optimiser state) as ``OUTPUT/model``; returns that URI.

    The switch is atomic (:func:`rsclip.model.versions.publish`): a failure while copying leaves the
    model that was there before complete and in place."""
    target = f"{output.rstrip('/')}/model"
    with checkpoint.as_directory() as src:
        files = sorted(p for p in Path(src).iterdir() if p.name != STATE_FILE and p.is_file() and not p.is_symlink())
        versions.publish(files, target)
    return target


def _read_data(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """The training and validation samples; raises :class:`InvalidInput` when either is missing."""
    train = read_samples(cfg.data, split=cfg.train_split)
    val = read_samples(cfg.val_data or cfg.data, split=cfg.val_split)
    if cfg.val_data and not val:  # a dedicated validation source without split labels is all validation
        val = read_samples(cfg.val_data)
    if len(train) < cfg.num_workers:
        raise InvalidInput(f"{len(train)} '{cfg.train_split}' samples with captions in {cfg.data}: fewer than "
                           f"the {cfg.num_workers} workers")
    if not val:
        raise InvalidInput(f"no '{cfg.val_split}' samples in {cfg.val_data or cfg.data} to validate on")
    return train, val


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says on the connected Ray cluster; returns the summary also written to
    ``OUTPUT/summary.json``.

    Raises :class:`InvalidInput` for bad settings, missing data, or an output that already holds a run when
    ``resume`` is not set, and :class:`~rsclip.errors.ClusterUnfit` (before any work) when the cluster can
    never hold the workers beside a decode task; a run without progress for ``stall_abort`` seconds stops
    with an :class:`~rsclip.errors.RsclipError`. With ``resume`` and an existing run, Ray Train restores it
    and training continues from its latest checkpoint (same step, optimiser, scheduler and data position).
    """
    check_output(cfg.validate())
    cluster.check_fit(cluster_demand(cfg))
    train, val = _read_data(cfg)
    from transformers import AutoImageProcessor

    preprocess = ImagePreprocess.from_processor(AutoImageProcessor.from_pretrained(resolve_model_source(cfg.model)))
    val_stage = StageConfig.from_preprocess(preprocess, image_aug=False, text_aug=False, keep_captions=True)
    val_ds = build_dataset(val, val_stage, num_cpus=cfg.data_cpus)
    # the schedule spans all epochs even when max_steps stops early, so a resumed run continues it unchanged
    total = steps_per_epoch(len(train), cfg) * cfg.epochs
    classes = class_names(val)
    trainer = build_trainer(cfg, train, val_ds, total_steps=total, classes=classes)
    with Watchdog("fine-tuning", report_after=cfg.stall_timeout, stop_after=cfg.stall_abort) as watchdog:
        watchdog.progress("training (the Ray Train workers run the epochs)")
        result = trainer.fit()
    summary: dict[str, Any] = {
        "output": cfg.output, "train_samples": len(train), "val_samples": len(val),
        "classes": len(classes), "total_steps_planned": total,
        "final_metrics": _plain(result.metrics), "config": cfg.to_dict(),
    }
    best = _best_checkpoint(result, cfg.best_metric)
    if best is not None:
        checkpoint, best_metrics = best
        summary["model"] = export_model(checkpoint, cfg.output)
        summary["best_metrics"] = _plain(best_metrics)
        summary["best_checkpoint"] = checkpoint.path
    metrics.write_text(f"{cfg.output.rstrip('/')}/summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _plain(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (values or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}


def _best_checkpoint(result, key: str):
    candidates = list(getattr(result, "best_checkpoints", None) or [])
    if not candidates and result.checkpoint is not None:
        return result.checkpoint, result.metrics or {}
    if not candidates:
        return None
    return max(candidates, key=lambda cm: (cm[1].get(key, UNEVALUATED_SCORE), cm[1].get("step", 0)))
