"""The embedding job's settings: :class:`EmbedConfig`, every field a flag of ``jobs/embed_archive.py``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rsclip.geo import dates, raster
from rsclip.runtime import flags
from rsclip.table import tiles
from rsclip.model.sources import DEFAULT_MODEL, model_reference
from rsclip.errors import InvalidInput
from rsclip.ingest import stac
from rsclip.ingest.writer import DEFAULT_COMMIT_ROWS, MAX_FAILED_EMBED_BATCHES

INDEX_MODES = ("auto", "always", "never")
DEFAULT_BATCH_SIZE = 64  # images per embedder call on CPU
GPU_BATCH_SIZE = 256  # with GPUs: ViT-B/32 fp16 on an H200 embeds 1.9x more images/s than at 64 (BENCHMARKS.md)
# Planning/decoding tasks per read slot of the cluster at least, when the archive allows (files_per_task).
TASKS_PER_READ_SLOT = 4
# Planning/decoding tasks of a run at most (more only where the read slots need TASKS_PER_READ_SLOT each): the
# driver holds the listing's block of every task not yet started, ~36 KB each (BENCHMARKS.md, "What the driver's
# memory holds"), so a larger archive makes larger tasks, not more of them.
MAX_READ_TASKS = 1024
setting = flags.setting


@dataclass(frozen=True)
class EmbedConfig:
    """Everything the embedding job needs; built once by the job script, passed down typed.

    ``num_actors`` embedder actors each reserve ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs;
    planning/decoding tasks reserve ``read_cpus`` each; tiles are committed every ``commit_rows`` rows.
    """

    db: str = setting(help="LanceDB location: s3://bucket/prefix or a local folder", group="input and output")
    archive: str | None = setting(None, group="input and output",
                                  help="s3://bucket/prefix or a local folder (walked recursively); or --stac")
    catalog: stac.StacOptions = field(default_factory=stac.StacOptions)
    datetime_from_name: str | None = setting(None, group="input and output",
                                             help="regular expression whose named group (?P<datetime>...) finds "
                                                  "the acquisition date in a file's uri, e.g. "
                                                  r"'_(?P<datetime>\d{8})\.tif$' (default: the GeoTIFF's tags)")
    table: str = setting(tiles.DEFAULT_TABLE, help="tile table name", group="input and output")
    model: str = setting(DEFAULT_MODEL, help="hub id, save_pretrained folder or s3:// prefix",
                         group="input and output")
    raster: raster.RasterOptions = field(default_factory=raster.RasterOptions)
    batch_size: int | None = setting(None, group="resources",
                                     help="images per embedder call (default 64, or 256 with --gpus-per-actor)")
    num_actors: int = setting(1, help="embedder actors", group="resources")
    cpus_per_actor: float = setting(1.0, help="CPUs reserved per embedder actor", group="resources")
    gpus_per_actor: float = setting(0.0, help="GPUs per embedder actor", group="resources")
    torch_threads: int | None = setting(None, group="resources",
                                        help="intra-op threads per actor on CPU (default: the CPUs it reserves)")
    read_cpus: float = setting(1.0, help="CPUs per planning/decoding task", group="resources")
    read_tasks: int | None = setting(None, help="most planning/decoding tasks at once", group="resources")
    files_per_task: int = setting(256, group="resources",
                                  help="files planned and read per task: fewer, larger tasks cost Ray less per "
                                       "chip (~6 ms of the driver's CPU per task); a small archive is spread over "
                                       f"{TASKS_PER_READ_SLOT} tasks per read slot of the cluster however, and an "
                                       f"archive that would need over {MAX_READ_TASKS:,} tasks gets larger ones "
                                       "(planned this many files at a time)")
    commit_rows: int = setting(DEFAULT_COMMIT_ROWS, group="resources",
                               help="tiles per fragment a write task writes, and per table commit (the driver "
                                    "commits written fragments once they hold this many tiles, or after 30 s)")
    write_tasks: int = setting(4, help="most write tasks at once (each writes one fragment)", group="resources")
    max_failed_batches: int = setting(MAX_FAILED_EMBED_BATCHES, group="resources",
                                      help="stop the job after this many consecutive embedding batches (of "
                                           "--batch-size tiles, as the embedder actors run them) in which every "
                                           "tile failed in the model (a broken model or device) instead of "
                                           "recording the rest of the archive as errors; bad files never count")
    stall_timeout: float = setting(300.0, group="resources",
                                   help="seconds without progress before the job says on the console which stage "
                                        "is stuck, and again every as many seconds (0: never)")
    stall_abort: float = setting(3600.0, group="resources",
                                 help="seconds without progress after which the job stops with an error naming "
                                      "the stuck stage (0: never)")
    index: str = setting("auto", choices=INDEX_MODES,
                         help="build/refresh the ANN index after writing: auto (from 10,000 rows), always, never")
    verbose: bool = setting(False, help="show Ray's own log lines on the console (by default only its errors, "
                                        "and rsclip's progress lines)")

    def __post_init__(self) -> None:
        # absolute before anything records it or sends it to the actors, which run in another folder
        object.__setattr__(self, "model", model_reference(self.model))
        if (self.archive is None) == (self.catalog.stac is None):
            raise InvalidInput("give the images to embed: either --archive or --stac (one of them)")
        dates.name_pattern(self.datetime_from_name)
        if self.index not in INDEX_MODES:
            raise InvalidInput(f"index must be one of {INDEX_MODES}, got {self.index!r}")
        if self.batch_size is None:
            default = GPU_BATCH_SIZE if self.gpus_per_actor > 0 else DEFAULT_BATCH_SIZE
            object.__setattr__(self, "batch_size", default)
        if min(self.batch_size, self.num_actors, self.files_per_task, self.commit_rows, self.max_failed_batches,
               self.write_tasks) < 1:
            raise InvalidInput("batch size, actors, files per task, commit rows, max failed batches and write "
                               "tasks must be positive")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0 or self.read_cpus <= 0:
            raise InvalidInput("CPU and GPU reservations must not be negative")
        if self.stall_timeout < 0 or self.stall_abort < 0:
            raise InvalidInput("stall timeouts must not be negative (0 turns them off)")

    def to_dict(self) -> dict:
        """Plain data for crossing into Ray workers (rebuild with :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EmbedConfig":
        return flags.build(cls, data)
