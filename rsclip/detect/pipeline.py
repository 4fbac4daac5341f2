"""The detection job: a label set -> a linear probe -> a score for every tile -> ``<table>_detections``.

:func:`run_detection` reads the label set (:mod:`rsclip.table.labels`), trains and cross-validates the probe
(:mod:`rsclip.detect.probe`, in the driver: a few thousand vectors at most), plans the table version's parts
(:func:`rsclip.detect.scoring.plan_parts`) and scores them in Ray Data tasks reading Lance fragments in
parallel; each task writes its part's detections as uncommitted fragments of ``<table>_detections`` and the
driver commits them in few large commits, recording the parts each commit completed
(:mod:`rsclip.detect.writes`): no detection row reaches the driver. Killed at any moment and rerun, it trains
the same probe (same labels and settings: same model version), deletes the rows of parts committed but not
recorded, skips the parts recorded (:func:`rsclip.table.detections.settle`) and leaves exactly one row per
tile and label of its version. When every part is in, the version is recorded complete (readers turn to it:
:func:`rsclip.table.detections.shown_version`) and rows of older model versions of the label are removed.

Bad input fails before anything is written or any cluster starts: an unknown label set, a set without
positives, or without negatives and without ``--background``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

from rsclip.runtime import cluster, flags
from rsclip.table import datasets, detections, labels, tiles
from rsclip.detect import scoring
from rsclip.detect.writes import DEFAULT_COMMIT_ROWS, PartWriter
from rsclip.detect.probe import DEFAULT_BACKGROUND, Probe, quality_sentence, train_probe
from rsclip.errors import InvalidInput, RsclipError

log = logging.getLogger(__name__)
setting = flags.setting
# Memory a scoring task may use: one part's vectors (65,536 x 512 float32 = 128 MiB) and its output.
SCORE_TASK_MEMORY = 512 * 1024 * 1024
# The write arguments of the warm-up's empty parts, which write nothing (the detections table may not exist yet).
NO_WRITES = {"location": "", "run": "", "schema": detections.STORED_SCHEMA}
WARM_UP_SECONDS = 600  # starting the scoring workers: a cluster that cannot is reported, not waited on forever


@dataclass(frozen=True)
class DetectConfig:
    """Everything the detection job needs; built once by the job script, passed down typed."""

    db: str = setting(help="LanceDB location: s3://bucket/prefix or a local folder", group="input and output")
    label: str = setting(help="the label set to train on (rsclip label add ...)", group="input and output")
    table: str = setting(tiles.DEFAULT_TABLE, help="tile table name", group="input and output")
    background: int = setting(DEFAULT_BACKGROUND, group="probe",
                              help="random tiles of the table added as negatives (0: the labelled negatives only)")
    c: float = setting(1.0, help="inverse regularisation strength of the logistic regression", group="probe")
    seed: int = setting(0, help="seed of the background draw and the cross-validation folds", group="probe")
    report_k: int = setting(10, help="k of the cross-validated precision@k", group="probe")
    rows_per_task: int = setting(scoring.ROWS_PER_PART, help="tiles scored per Ray task (one part)",
                                 group="resources")
    read_cpus: float = setting(1.0, help="CPUs reserved per scoring task", group="resources")
    read_tasks: int | None = setting(None, help="most scoring tasks at once (default: as the cluster allows)",
                                     group="resources")
    commit_rows: int = setting(DEFAULT_COMMIT_ROWS, help="detections per commit (the driver commits the "
                               "scoring tasks' fragments; a part waits at most 30 s)", group="resources")

    def __post_init__(self) -> None:
        labels.validate_label(self.label)
        if (self.background < 0 or self.report_k < 1 or self.rows_per_task < 1 or self.read_cpus <= 0
                or self.commit_rows < 1):
            raise InvalidInput("background must be >= 0; report k, rows per task, read CPUs and commit rows positive")
        if self.read_tasks is not None and self.read_tasks < 1:
            raise InvalidInput(f"read tasks must be positive, got {self.read_tasks}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DetectSummary:
    """What a run did: the probe's quality, the parts and rows scored, the rate."""

    label: str = ""
    model_version: str = ""
    metrics: dict = field(default_factory=dict)
    table_rows: int = 0
    parts: int = 0
    parts_skipped: int = 0
    rows_scored: int = 0
    removed_stale: int = 0
    commits: int = 0
    commit_seconds: float = 0.0
    received_bytes: int = 0
    startup_seconds: float = 0.0
    scoring_seconds: float = 0.0
    rows_per_s: float = 0.0
    seconds: float = 0.0

    def to_text(self) -> str:
        return (f"label {self.label!r}, model {self.model_version}: {quality_sentence(self.metrics)}; "
                f"{self.rows_scored} of {self.table_rows} tiles scored in {self.parts - self.parts_skipped} "
                f"parts ({self.parts_skipped} already done), {self.rows_per_s:.0f} rows/s; "
                f"{self.removed_stale} stale detections removed")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def build_dataset(config: DetectConfig, parts: list[dict], dataset, probe: Probe, write: dict):
    """The Ray Dataset of the job: one block per part -> :func:`rsclip.detect.scoring.score_parts` tasks
    (``write``: their write arguments, :meth:`rsclip.detect.writes.PartWriter.stage_kwargs`)."""
    import ray

    ds = ray.data.from_items(parts, override_num_blocks=max(1, len(parts)))
    # One operator reads and scores; reserving part of the cluster for each operator of the plan (Ray Data's
    # default) only held the scoring to one task at a time for its first parts (BENCHMARKS.md, "Detection").
    ds.context.op_resource_reservation_enabled = False
    return ds.map_batches(
        scoring.score_parts, batch_size=1, batch_format="numpy", num_cpus=config.read_cpus,
        memory=SCORE_TASK_MEMORY, concurrency=config.read_tasks,
        fn_kwargs={"uri": dataset.uri, "version": dataset.version, "weights": probe.weights,
                   "bias": probe.bias, "label": probe.label, "model_version": probe.model_version, **write})


def warm_up(config: DetectConfig, dataset, probe: Probe) -> None:
    """Check that a scoring task fits the cluster (:class:`~rsclip.errors.ClusterUnfit` naming
    ``--read-cpus`` otherwise), then start what the first parts would otherwise wait for (seconds on a fresh
    cluster): one worker process per concurrent scoring task, each with the table version open
    (:func:`rsclip.detect.scoring.open_version`, asked of all of them at once so that each starts its own
    worker), and Ray Data's own actors (the scoring stage run on empty parts)."""
    import ray

    cluster.check_fit(cluster.Demand("scoring tasks", 1, {"CPU": config.read_cpus, "memory": SCORE_TASK_MEMORY},
                                     "", {}, "--read-cpus"))
    slots = config.read_tasks or max(1, int(ray.cluster_resources().get("CPU", 1) // config.read_cpus))
    opener = ray.remote(num_cpus=config.read_cpus)(scoring.open_for_scoring)
    try:
        pids = ray.get([opener.remote(dataset.uri, dataset.version) for _ in range(slots)],
                       timeout=WARM_UP_SECONDS)
    except ray.exceptions.GetTimeoutError:
        raise RsclipError(f"no scoring task started within {WARM_UP_SECONDS} s: the cluster has no "
                          f"{config.read_cpus:g} CPUs free (see `ray status`; change --read-cpus)") from None
    log.info("scoring workers started: %d processes for %d concurrent tasks", len(set(pids)), slots)
    empty = [{detections.PART: f"warm-up-{i}", scoring.SLICES: "[]", detections.ROWS: 0} for i in range(slots)]
    for _ in build_dataset(config, empty, dataset, probe, NO_WRITES).iter_batches(batch_size=None,
                                                                                  batch_format="pyarrow"):
        pass


def write_parts(config: DetectConfig, probe: Probe, todo: list[dict], dataset, progress: bool, local: bool,
                summary: DetectSummary) -> None:
    """Score ``todo`` and commit their detections (:class:`rsclip.detect.writes.PartWriter`); counts into
    ``summary``."""
    target = detections.open_detections(config.db, config.table, create=True)
    writer = PartWriter(target, detections.open_progress(config.db, config.table, create=True), probe.label,
                        probe.model_version, commit_rows=config.commit_rows)
    try:
        for reports in _reports(config, todo, dataset, probe, progress, local, writer.stage_kwargs()):
            writer.take(reports)
        writer.flush()
    finally:
        writer.finish()
    summary.rows_scored, summary.received_bytes = writer.written, writer.received_bytes
    summary.commits, summary.commit_seconds = writer.committer.commits, writer.committer.seconds


def run_detection(config: DetectConfig, *, progress: bool = False, ray_address: str | None = cluster.LOCAL,
                  runtime_env: dict | None = None, local: bool = False) -> DetectSummary:
    """Score every tile of ``config.table`` for ``config.label``; see the module doc.

    ``local`` scores in this process without Ray (small tables, tests). Raises
    :class:`~rsclip.errors.NotFound` for an unknown table or label set and ``InvalidInput`` for a label set
    that cannot train a probe, before anything is written.
    """
    started = time.monotonic()
    table = tiles.open_table(config.db, config.table)
    frame = labels.read_labels(config.db, config.label, table=config.table)
    probe = train_probe(table, config.label, frame, background=config.background, c=config.c,
                        seed=config.seed, k=config.report_k)
    dataset = datasets.dataset_of(table)
    parts = scoring.plan_parts(dataset, config.rows_per_task)
    done = detections.settle(detections.open_detections(config.db, config.table),
                             detections.open_progress(config.db, config.table), probe.label, probe.model_version,
                             [p[detections.PART] for p in parts])
    todo = [p for p in parts if p[detections.PART] not in done]
    summary = DetectSummary(label=probe.label, model_version=probe.model_version, metrics=probe.metrics,
                            table_rows=dataset.count_rows(), parts=len(parts), parts_skipped=len(parts) - len(todo))
    log.info("probe %s of %r: %s; %d parts to score, %d done before", probe.model_version, probe.label,
             probe.metrics, len(todo), len(parts) - len(todo))
    if todo and not local:  # before the clock: scoring is what is timed
        startup = time.monotonic()
        cluster.start_ray(ray_address, runtime_env=runtime_env, log_to_driver=False)
        warm_up(config, dataset, probe)
        summary.startup_seconds = time.monotonic() - startup
    scoring_started = time.monotonic()
    if todo:
        write_parts(config, probe, todo, dataset, progress, local, summary)
    summary.scoring_seconds = time.monotonic() - scoring_started
    summary.rows_per_s = summary.rows_scored / summary.scoring_seconds if summary.scoring_seconds > 0 else 0.0
    detections.record_complete(detections.open_progress(config.db, config.table, create=True), probe.label,
                               probe.model_version, summary.table_rows)
    summary.removed_stale = detections.drop_other_versions(config.db, config.table, probe.label,
                                                           probe.model_version)
    summary.seconds = time.monotonic() - started
    return summary


def _reports(config, todo, dataset, probe, progress, local, write: dict):
    """The scoring stage's report rows (:data:`rsclip.detect.scoring.REPORT_SCHEMA`): from Ray Data (one block
    per part), or from the same stage run here when ``local``."""
    score = {"weights": probe.weights, "bias": probe.bias, "label": probe.label,
             "model_version": probe.model_version, **write}
    if local:
        return (scoring.score_parts({detections.PART: [p[detections.PART]], scoring.SLICES: [p[scoring.SLICES]]},
                                    dataset.uri, dataset.version, **score) for p in todo)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = progress
    ds = build_dataset(config, todo, dataset, probe, write)
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)


__all__ = ["DetectConfig", "DetectSummary", "run_detection"]
