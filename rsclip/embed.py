"""The embedding job: an archive through Ray Data into the tile table, exactly once, in bounded memory.

Roles (clip-retrieval's reader -> mapper -> writer, with Ray Data as the distributor):

- reader, :mod:`rsclip.archive`: list the archive (the driver), plan tiles, mark those already in the table
  and decode the rest (CPU tasks);
- mapper, :class:`ImageEmbedder`: a callable class on a batch dict; loads the model once per actor (fp16
  on GPU) and works without Ray;
- writer, :mod:`rsclip.writer`: the driver iterates the pipeline's output batches and commits them.

:func:`run_embedding` wires them: list -> plan -> mark tiles already in the table -> read/decode/resize ->
embedder actor pool -> write; then builds or refreshes the ANN index (:mod:`rsclip.index`) and returns an
:class:`EmbedSummary`. Ray Data streams: the driver never holds the dataset, only one output batch at a time.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from rsclip import archive, raster, store
from rsclip.model import DEFAULT_MODEL, ImagePreprocess, load_model, resolve_model_source
from rsclip.writer import TileWriter, open_errors_table

log = logging.getLogger(__name__)

INDEX_MODES = ("auto", "always", "never")
DEFAULT_BATCH_SIZE = 64  # images per embedder call on CPU
GPU_BATCH_SIZE = 256  # with GPUs: ViT-B/32 fp16 on an H200 embeds 1.9x more images/s than at 64 (BENCHMARKS.md)
# Memory a planning/decoding task may use (a batch of decoded tiles plus one open scene).
READ_TASK_MEMORY = 512 * 1024 * 1024


class EmbedSetupError(RuntimeError):
    """A systemic fault found before the pipeline starts (store unreachable, credentials, bucket, model)."""


@dataclass(frozen=True)
class EmbedConfig:
    """Everything the embedding job needs; built once by the job script, passed down typed.

    ``num_actors`` embedder actors each reserve ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs;
    ``torch_threads`` (default: the CPUs the actor reserves, at least 1) sets intra-op threads on CPU.
    Planning/decoding tasks reserve ``read_cpus`` each; ``read_tasks`` caps how many run at once (None:
    as many as the CPUs allow).
    Tiles are committed every ``commit_rows`` rows. ``index``: ``auto`` builds the ANN index once the table
    is large enough to pay and refreshes an existing one; ``always`` builds even for small tables;
    ``never`` leaves indexes alone.
    """

    archive: str
    db: str
    table: str = store.DEFAULT_TABLE
    model: str = DEFAULT_MODEL
    raster: raster.RasterOptions = field(default_factory=raster.RasterOptions)
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE, or GPU_BATCH_SIZE when actors have GPUs
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    torch_threads: int | None = None
    read_cpus: float = 1.0
    read_tasks: int | None = None
    files_per_task: int = 16
    commit_rows: int = 512
    index: str = "auto"

    def __post_init__(self) -> None:
        if self.index not in INDEX_MODES:
            raise ValueError(f"index must be one of {INDEX_MODES}, got {self.index!r}")
        if self.batch_size is None:
            default = GPU_BATCH_SIZE if self.gpus_per_actor > 0 else DEFAULT_BATCH_SIZE
            object.__setattr__(self, "batch_size", default)
        if self.batch_size < 1 or self.num_actors < 1 or self.files_per_task < 1 or self.commit_rows < 1:
            raise ValueError("batch size, actors, files per task and commit rows must be positive")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0 or self.read_cpus <= 0:
            raise ValueError("CPU and GPU reservations must not be negative")

    def to_dict(self) -> dict:
        """Plain data for crossing into Ray workers (rebuild with :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EmbedConfig":
        data = dict(data)
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("raster").items()}
        return cls(raster=raster.RasterOptions(**opts), **data)


@dataclass
class EmbedSummary:
    """What a run did. ``images_per_s`` counts embedded tiles over the pipeline's wall time."""

    files: int = 0
    tiles_planned: int = 0
    embedded: int = 0
    skipped_present: int = 0
    nodata: int = 0
    failed: int = 0
    failed_files: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    table_rows: int = 0
    index: str = ""

    def to_text(self) -> str:
        """The human summary line printed by the job."""
        if self.files == 0:
            return "0 files found in the archive: nothing to embed"
        return (
            f"{self.files} files, {self.tiles_planned} tiles planned: {self.embedded} embedded, "
            f"{self.skipped_present} skipped as present, {self.nodata} nodata, {self.failed} failed "
            f"({self.failed_files} unreadable files); {self.images_per_s:.1f} images/s over "
            f"{self.seconds:.1f} s; table has {self.table_rows} rows; index: {self.index or 'untouched'}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def model_spec(source: str) -> tuple[int, ImagePreprocess]:
    """``(embedding size, image preprocessing)`` of a model without loading its weights.

    Raises ``ValueError`` when the model cannot be found.
    """
    from transformers import AutoImageProcessor, CLIPConfig

    path = resolve_model_source(source)
    try:
        config = CLIPConfig.from_pretrained(path)
        processor = AutoImageProcessor.from_pretrained(path)
    except OSError as exc:
        raise ValueError(f"cannot load CLIP model {source}: {exc}") from exc
    return int(config.projection_dim), ImagePreprocess.from_processor(processor)


class ImageEmbedder:
    """Mapper: adds ``vector`` (float32 ``(N, D)``, unit rows) to a read batch; rows whose status is
    ``ready`` are embedded (status ``embedded``), others get zeros and keep their status.

    Callable on a plain batch dict (``archive.READ_COLUMNS``), with or without Ray. The model is loaded once
    in ``__init__``; on CUDA it runs in half precision. ``pixels`` is dropped from the output.
    """

    def __init__(self, model: str, *, device: str | None = None, torch_threads: int | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.encoder = load_model(model, device=device)
        self.dim = self.encoder.dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = np.asarray(batch[archive.STATUS]).astype(object)
        n = len(status)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ready = np.flatnonzero(status == archive.READY)
        stage, message = np.asarray(batch[archive.STAGE]).copy(), np.asarray(batch[archive.MESSAGE]).copy()
        if len(ready):
            try:
                vectors[ready] = self.encoder.encode_images(archive.batch_images(batch, ready),
                                                            batch_size=len(ready))
                status[ready] = archive.EMBEDDED
            except Exception as exc:  # a whole batch failed to embed: record it, keep the job going
                status[ready] = archive.ERROR
                stage[ready] = archive.STAGE_EMBED
                message[ready] = f"{type(exc).__name__}: {exc}"
        out = {k: v for k, v in batch.items() if k != archive.PIXELS}
        out.update({archive.STATUS: status, archive.STAGE: stage, archive.MESSAGE: message,
                    store.VECTOR: vectors})
        return out


def check_db(db: str) -> None:
    """Raise :class:`EmbedSetupError` when an ``s3://`` db's bucket is missing or the store refuses us."""
    try:
        archive.check_bucket(db)
    except archive.ArchiveError as exc:
        raise EmbedSetupError(f"table store {db}: {exc}") from None


def _actor_cpus(config: EmbedConfig) -> float:
    """CPUs each embedder actor reserves, leaving at least one CPU (or a share) for the read tasks: an
    actor pool holding every CPU starves the readers and the pipeline stalls."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    want = config.cpus_per_actor * config.num_actors
    spare = max(total - config.read_cpus, total / 2)
    if want <= spare:
        return config.cpus_per_actor
    cpus = spare / config.num_actors
    log.warning("reserving %.2f CPUs per embedder actor (asked %.2f): %d actors on %.0f CPUs must leave "
                "room for the read tasks", cpus, config.cpus_per_actor, config.num_actors, total)
    return cpus


def build_index_after(config: EmbedConfig) -> str:
    """Create or refresh the table's indexes according to ``config.index``; a text saying what was done."""
    if config.index == "never":
        return "not touched (--index never)"
    from rsclip import index

    min_rows = index.MIN_ANN_ROWS if config.index == "auto" else 256
    state = index.build_index(config.db, config.table, min_rows=min_rows)
    return state.action


def run_embedding(config: EmbedConfig, *, progress: bool = False, ray_address: str | None = "local",
                  runtime_env: dict | None = None) -> EmbedSummary:
    """Embed every tile of ``config.archive`` into ``config.table`` of ``config.db``; see the module doc.

    Uses the connected Ray cluster; when none is, ``ray.init(address=ray_address, runtime_env=runtime_env)``
    is called after the probes, so a bad store fails before any cluster starts (``"local"``, the default,
    starts a private local cluster rather than joining whatever cluster runs on the machine). Raises :class:`EmbedSetupError`
    for systemic faults found before the pipeline starts (archive or db store unreachable, credentials,
    missing bucket or folder, unknown model, table of another model).
    """
    import ray

    started = time.monotonic()
    # 1. Probe: list the archive and check the db's store before anything heavy starts.
    try:
        files = archive.list_archive(config.archive)
    except archive.ArchiveError as exc:
        raise EmbedSetupError(str(exc)) from None
    check_db(config.db)
    try:
        dim, preprocess = model_spec(config.model)
    except ValueError as exc:
        raise EmbedSetupError(str(exc)) from None
    if files and not ray.is_initialized():
        # before LanceDB starts its runtime threads: Ray forks its local daemons
        ray.init(address=ray_address, runtime_env=runtime_env, log_to_driver=False)
    try:
        table = store.create_table(config.db, config.table, model=config.model, dim=dim)
    except ValueError as exc:
        raise EmbedSetupError(str(exc)) from None
    except OSError as exc:
        raise EmbedSetupError(f"table store {config.db}: {exc}") from None
    errors_table = open_errors_table(config.db, config.table)
    summary = EmbedSummary(files=len(files))
    if not files:
        summary.table_rows = table.count_rows()
        summary.seconds = time.monotonic() - started
        return summary

    # 2. The pipeline.
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    writer = TileWriter(table, errors_table, commit_rows=config.commit_rows)
    items = [{store.URI: uri, archive.SIZE: size} for uri, size in files]
    # Read stages state their memory need; the differing resources also keep Ray Data from fusing them into
    # the embedder actors, where decoding would run serially with the model instead of beside it.
    read_args = {"num_cpus": config.read_cpus, "memory": READ_TASK_MEMORY, "batch_format": "numpy",
                 "compute": TaskPoolStrategy(size=config.read_tasks)}
    blocks = max(1, min(len(items) // config.files_per_task + 1, 1000))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(archive.plan_files, fn_kwargs={"options": asdict(config.raster)},
                        batch_size=config.files_per_task, **read_args)
    ds = ds.map_batches(archive.mark_present, fn_kwargs={"db": config.db, "table": config.table,
                                                 "version": table.version},
                        batch_size=None, **read_args)  # per block: coalescing would serialise small archives
    ds = ds.map_batches(archive.read_tiles, fn_kwargs={"preprocess": asdict(preprocess)},
                        batch_size=config.batch_size, **read_args)
    actor_cpus = _actor_cpus(config)
    threads = config.torch_threads
    if threads is None and not config.gpus_per_actor:
        # as many intra-op threads as CPUs reserved: more threads than cores left to the actor fight the
        # decode tasks and other tenants for the same cores (OpenMP barriers spin), measured 2.5x slower
        threads = max(1, round(actor_cpus))
    ds = ds.map_batches(
        ImageEmbedder,
        fn_constructor_kwargs={"model": config.model, "torch_threads": threads},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=config.num_actors),
        num_cpus=actor_cpus,
        num_gpus=config.gpus_per_actor or None,
    )
    pipeline_start = time.monotonic()
    # the driver takes commit-sized batches: one table commit each, one batch in memory at a time
    for batch in ds.iter_batches(batch_size=config.commit_rows, batch_format="numpy", prefetch_batches=1):
        summary.tiles_planned += len(batch[store.ID])
        writer.write(batch)
    counts = writer.close()
    elapsed = time.monotonic() - pipeline_start
    summary.embedded, summary.skipped_present = counts.embedded, counts.present
    summary.nodata, summary.failed, summary.failed_files = counts.nodata, counts.failed, counts.failed_files
    # a file that failed planning is one error row, not a planned tile
    summary.tiles_planned -= counts.failed_files
    summary.seconds = time.monotonic() - started
    summary.images_per_s = counts.embedded / elapsed if elapsed > 0 else 0.0

    # 3. Index.
    summary.index = build_index_after(config)
    table.checkout_latest()
    summary.table_rows = table.count_rows()
    return summary


__all__ = ["EmbedConfig", "EmbedSetupError", "EmbedSummary", "ImageEmbedder", "run_embedding"]
