"""The embedding job: an archive through Ray Data into the tile table, exactly once, in bounded memory.

Roles (clip-retrieval's reader -> mapper -> writer, with Ray Data as the distributor):

- reader: :mod:`~rsclip.ingest.sources` (listing tasks, or a STAC search on the driver),
  :mod:`~rsclip.ingest.planning` and :mod:`~rsclip.ingest.reading` (CPU tasks: plan tiles, skip those already in
  the table, decode the rest);
- mapper: :class:`~rsclip.ingest.embedder.ImageEmbedder`, a callable class on a batch dict (actors);
- writer: :mod:`~rsclip.ingest.writer`, the driver commits the pipeline's output batches.

:func:`run_embedding` wires them as its :class:`~rsclip.ingest.config.EmbedConfig` says, then builds or
refreshes the indexes (:mod:`rsclip.table.index`) and returns an :class:`EmbedSummary`. Ray Data streams: the
driver never holds the dataset, only one output batch at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, replace

from rsclip.geo.windows import SCENES_WHOLE
from rsclip.runtime import cluster
from rsclip.table import anchors, tiles
from rsclip.model.sources import ModelIdentity, model_identity
from rsclip.runtime.watchdog import Watchdog
from rsclip.errors import RsclipError, StoreUnavailable
from rsclip.ingest import listing, planning, preflight, reading, sources, write_stage
from rsclip.ingest.config import MAX_READ_TASKS, TASKS_PER_READ_SLOT, EmbedConfig
from rsclip.ingest.embedder import ImageEmbedder, model_spec
from rsclip.ingest.writer import (NothingEmbedded, TileWriter, clear_unlisted_errors, errored_uris,
                                  open_errors_table)

log = logging.getLogger(__name__)

# Memory a planning/decoding task may use (a batch of decoded tiles plus one open scene).
READ_TASK_MEMORY = 512 * 1024 * 1024
# Memory a write task may use: --commit-rows tiles with their vectors, as numpy and as Arrow (~3 x 2.3 KB each).
WRITE_TASK_MEMORY = 256 * 1024 * 1024
# Ray Data's wait for the embedder actors outlasts the watchdog's stop by this much (see _set_data_context);
# with the watchdog's stop turned off (--stall-abort 0) it waits as long as the user asked: for ever.
ACTOR_START_MARGIN_S = 60
NEVER_S = 10**9


@dataclass
class EmbedSummary:
    """What a run did. ``images_per_s`` counts the tiles embedded after the first embedded batch reached the
    driver over the time since (cluster start-up and model loading left out; all of the pipeline's time when
    one batch held everything); ``startup_seconds``: from the start until then; ``seconds``: the whole run."""

    files: int = 0
    tiles_planned: int = 0
    embedded: int = 0
    skipped_present: int = 0
    nodata: int = 0
    failed: int = 0
    failed_files: int = 0
    stale_removed: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    startup_seconds: float = 0.0
    table_rows: int = 0
    index: str = ""
    commits: int = 0
    commit_seconds: float = 0.0
    received_bytes: int = 0  # what the driver received from the pipeline (reports of the write stage)

    def to_text(self) -> str:
        """The human summary line printed by the job."""
        if self.files == 0:
            return "0 files found in the archive (or items in the STAC source): nothing to embed"
        return (
            f"{self.files} files, {self.tiles_planned} tiles planned: {self.embedded} embedded, "
            f"{self.skipped_present} skipped as present, {self.nodata} nodata, {self.failed} failed "
            f"({self.failed_files} unreadable files), {self.stale_removed} stale removed; "
            f"{self.images_per_s:.1f} images/s once embedding (first tiles after {self.startup_seconds:.1f} s), "
            f"{self.seconds:.1f} s in all; table has {self.table_rows} rows; index: {self.index or 'untouched'}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def check_db(db: str) -> None:
    """Raise :class:`StoreUnavailable` when an ``s3://`` db's bucket is missing or the store refuses us."""
    try:
        listing.check_bucket(db)
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"table store {db}: {exc}") from None


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
    from rsclip.table import index

    min_rows = index.MIN_ANN_ROWS if config.index == "auto" else 256
    state = index.build_index(config.db, config.table, min_rows=min_rows)
    return state.action


@dataclass(frozen=True)
class ModelFacts:
    """What the driver learns about the model before any cluster work: embedding size, preprocessing and
    the exact weights (recorded in the table; every embedder actor checks its own copy against them)."""

    dim: int
    preprocess: object
    identity: ModelIdentity


def _probe(config: EmbedConfig) -> tuple[sources.Probed, ModelFacts]:
    """The sources' probe (:func:`rsclip.ingest.sources.check_archive`) and model facts, found before any
    cluster work (store and model faults raise)."""
    probed = sources.check_archive(config)
    check_db(config.db)
    dim, preprocess = model_spec(config.model)
    return probed, ModelFacts(dim, preprocess, model_identity(config.model))


def _open_tables(config: EmbedConfig, model: ModelFacts):
    """The tile table (created, or upgraded in place; other weights and grids refused), its errors table, the
    grid its windows are cut on and whether it takes small scenes whole (:mod:`rsclip.table.anchors`)."""
    try:
        table = tiles.create_table(config.db, config.table, model=config.model, dim=model.dim,
                                   identity=model.identity)
        grid = anchors.settle_grid(table, config.raster.grid)
        whole_scenes = anchors.settle_scenes(table) == SCENES_WHOLE
    except OSError as exc:
        raise StoreUnavailable(f"table store {config.db}: {exc}") from None
    return table, open_errors_table(config.db, config.table), grid, whole_scenes


def _writer(config: EmbedConfig, table, errors_table, started: dt.datetime) -> TileWriter:
    """The writer of this run, told which files have error rows (one scan of the errors table)."""
    return TileWriter(table, errors_table, commit_rows=config.commit_rows,
                      max_failed_batches=config.max_failed_batches, started=started,
                      errored=errored_uris(errors_table))


def files_per_task(config: EmbedConfig, files: int) -> int:
    """Files per planning/decoding task: ``--files-per-task`` (each task costs Ray ~6 ms of the driver's CPU,
    BENCHMARKS.md "Pipeline"); fewer when that would leave read slots of the cluster idle (at least
    :data:`TASKS_PER_READ_SLOT` tasks per slot, so that a small archive is read in parallel); more when it
    would make more than :data:`MAX_READ_TASKS` tasks, or than the read slots need where they need more (the
    driver's memory grows with the tasks waiting). A task plans its files ``--files-per-task`` at a time."""
    import ray

    slots = config.read_tasks or max(1, int(ray.cluster_resources().get("CPU", 1) // config.read_cpus))
    spread = TASKS_PER_READ_SLOT * slots
    return max(1, min(config.files_per_task, -(-files // spread)), -(-files // max(MAX_READ_TASKS, spread)))


def build_dataset(config: EmbedConfig, listed: sources.Listed, table_version: int, model: ModelFacts,
                  grid: str | None = None, whole_scenes: bool = False, write: dict | None = None):
    """The Ray Dataset of the pipeline: listed files -> plan -> mark present -> read -> embedder actors ->
    write (when ``write``, the write stage's arguments: :meth:`~rsclip.ingest.writer.TileWriter.stage_kwargs`).
    ``grid`` and ``whole_scenes``: the table's (:func:`rsclip.table.anchors.settle_grid`, ``settle_scenes``)."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    # Read stages state their memory need; the differing resources also keep Ray Data from fusing them into
    # the embedder actors, where decoding would run serially with the model instead of beside it.
    read_args = {"num_cpus": config.read_cpus, "memory": READ_TASK_MEMORY, "batch_format": "numpy",
                 "compute": TaskPoolStrategy(size=config.read_tasks)}
    per_task = files_per_task(config, listed.files)
    ds = listed.dataset.repartition(target_num_rows_per_block=per_task)
    options = asdict(replace(config.raster, grid=grid or config.raster.grid))
    ds = ds.map_batches(planning.plan_files, fn_kwargs={"options": options,
                                                        "datetime_pattern": config.datetime_from_name,
                                                        "whole_scenes": whole_scenes},
                        batch_size=min(per_task, config.files_per_task), **read_args)
    ds = ds.map_batches(reading.mark_present, fn_kwargs={"db": config.db, "table": config.table,
                                                         "version": table_version},
                        batch_size=None, **read_args)  # per block: coalescing would serialise small archives
    ds = ds.map_batches(reading.read_slices, fn_kwargs={"preprocess": asdict(model.preprocess),
                                                        "rows": config.batch_size},
                        batch_size=None, **read_args)  # per block, as for mark_present: see read_slices
    actor_cpus = _actor_cpus(config)
    cluster.check_fit(preflight.embed_demand(config, actor_cpus, READ_TASK_MEMORY))
    threads = config.torch_threads
    if threads is None and not config.gpus_per_actor:
        # as many intra-op threads as CPUs reserved: more threads than cores left to the actor fight the
        # decode tasks and other tenants for the same cores (OpenMP barriers spin), measured 2.5x slower
        threads = max(1, round(actor_cpus))
    ds = ds.map_batches(
        ImageEmbedder, fn_constructor_kwargs={"model": config.model, "torch_threads": threads, "dim": model.dim,
                                              "weights_sha256": model.identity.weights_sha256},
        batch_size=config.batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=config.num_actors),
        num_cpus=actor_cpus, num_gpus=config.gpus_per_actor or None,
    )
    if write is None:
        return ds
    # Writing is I/O and encoding, no CPU reserved: a reservation would compete with the read tasks for the
    # CPUs the actors leave (a stage that cannot be scheduled stalls the run); the task count bounds it.
    return ds.map_batches(write_stage.write_tiles, fn_kwargs=write, batch_size=config.commit_rows,
                          batch_format="numpy", num_cpus=0, memory=WRITE_TASK_MEMORY,
                          compute=TaskPoolStrategy(size=config.write_tasks))


def _set_data_context(config: EmbedConfig, progress: bool) -> None:
    """Ray Data's settings for this run: progress bars, and tiles read only once every embedder actor has
    started. Read tasks scheduled first took the CPUs a pending actor needed, on the node that held its GPU,
    and a run went on with one of its two actors (CI, 2026-12-05). The watchdog (``stall_abort``), not Ray
    Data, bounds the wait: Ray's own limit lies beyond it so that the stop names the actor still starting."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = progress
    ctx.wait_for_min_actors_s = int(config.stall_abort) + ACTOR_START_MARGIN_S if config.stall_abort else NEVER_S


def _write(ds, writer: TileWriter, summary: EmbedSummary, watchdog: Watchdog) -> float:
    """Drain the write stage's reports into the writer and count; the monotonic time the first embedded
    tiles were written (the end when none were)."""
    started = time.monotonic()
    first: tuple[float, int] | None = None  # when the first report with embedded tiles came, and how many
    watchdog.progress("waiting for the pipeline's first batch")
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        for text in batch[write_stage.REPORT]:
            report = writer.take(str(text))
            summary.tiles_planned += report.rows
            first = first or ((time.monotonic(), report.embedded) if report.embedded else None)
        watchdog.progress(f"waiting for the next batch ({summary.tiles_planned} tiles written)")
    counts = writer.close()
    summary.commits, summary.commit_seconds = writer.committer.commits, writer.committer.seconds
    summary.received_bytes = writer.received_bytes
    ended = time.monotonic()
    first_at, first_tiles = first or (ended, 0)
    # the rate once embedding runs: start-up (actors, model loading) is not an image rate
    steady, elapsed = counts.embedded - first_tiles, ended - first_at
    if steady <= 0 or elapsed <= 0:
        steady, elapsed = counts.embedded, ended - started
    summary.embedded, summary.skipped_present = counts.embedded, counts.present
    summary.nodata, summary.failed, summary.failed_files = counts.nodata, counts.failed, counts.failed_files
    summary.stale_removed = counts.stale_removed
    summary.tiles_planned -= counts.failed_files  # a file that failed planning is one error row, not a tile
    summary.images_per_s = steady / elapsed if elapsed > 0 else 0.0
    return first_at


def run_embedding(config: EmbedConfig, *, progress: bool = False, ray_address: str | None = cluster.LOCAL,
                  runtime_env: dict | None = None) -> EmbedSummary:
    """Embed every tile of ``config.archive`` into ``config.table`` of ``config.db``; see the module doc.

    Uses the connected Ray cluster; when none is, :func:`rsclip.runtime.cluster.start_ray` joins
    ``ray_address`` (``"local"``, the default, starts a private local cluster) after the probes, so a bad
    store fails before any cluster starts. Raises :class:`~rsclip.errors.RsclipError` subclasses for
    faults found before the pipeline starts (store unreachable, credentials, missing bucket or folder,
    unknown model, table of another model or of other weights, a cluster that can never hold the pipeline,
    a node that cannot reach the store the driver reaches: :mod:`~rsclip.ingest.preflight`), when
    embedding keeps failing, when every tile failed (:class:`~rsclip.ingest.writer.NothingEmbedded`: one line
    with the first kinds of failure) and when the run makes no progress for ``stall_abort`` seconds.
    A run over an archive (not a STAC search) deletes the error rows of files no longer listed in it.
    """
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc)
    probed, model = _probe(config)
    listed = None
    if probed:  # before LanceDB starts its runtime threads: Ray forks its local daemons
        cluster.start_ray(ray_address, runtime_env=runtime_env, log_to_driver=False, quiet=not config.verbose)
        preflight.check_workers(config, probed.first)
        listed = sources.list_sources(config, probed)
    table, errors_table, grid, whole_scenes = _open_tables(config, model)
    summary = EmbedSummary(files=listed.files if listed else 0)
    errored_seen: set[str] = set()
    if summary.files:
        _set_data_context(config, progress)
        writer = _writer(config, table, errors_table, started_at)  # scans the errors table: before the watchdog
        try:
            ds = build_dataset(config, listed, table.version, model, grid, whole_scenes, writer.stage_kwargs())
            with Watchdog("embedding", report_after=config.stall_timeout, stop_after=config.stall_abort) as dog, \
                    warnings.catch_warnings():
                # Ray Data's note that a small archive gives the write stage fewer inputs than --write-tasks
                warnings.filterwarnings("ignore", message="The maximum number of concurrent", category=UserWarning)
                summary.startup_seconds = _write(ds, writer, summary, dog) - started
        finally:
            writer.finish()
        if writer.counts.nothing_embedded():
            raise NothingEmbedded(f"nothing embedded: {writer.counts.failures()} (every failure is a row of "
                                  f"{tiles.errors_table_name(config.table)})")
        summary.index = build_index_after(config)
        table.checkout_latest()
        errored_seen = writer.errored_seen
    if config.archive is not None:  # the whole archive was listed: what is not in it was deleted
        gone = clear_unlisted_errors(errors_table, listing.archive_root(config.archive), errored_seen, started_at)
        if gone:
            log.info("removed the error rows of %d files no longer in %s", gone, config.archive)
    summary.table_rows = table.count_rows()
    summary.seconds = time.monotonic() - started
    return summary


__all__ = ["EmbedSummary", "ImageEmbedder", "RsclipError", "run_embedding"]
