"""Reading S3 chips: chips per CPU-second of the embedding job's read stages, in one process and in Ray read tasks.

    python bench/reading.py [--chips 512] [--files-per-task 16 64] [--cogs 8] [--repeats 3] [--no-ray]

The real RSICD JPEG chips of ``../shared/data`` (150x150) are uploaded once to a local SeaweedFS and read back
by the pipeline's own stages, ``planning.plan_files`` (GET + header check) then ``reading.read_tiles`` (decode +
resize to 224), every round, arms interleaved (bench/common.py):

- ``inproc_*``: both stages in this process, per CPU-second of this process (all its threads; the S3 server's
  CPU is not counted);
- ``ray_*_fpt<N>``: the same stages as Ray Data read tasks (``TaskPoolStrategy``, one CPU each, ``N`` files per
  planning task as ``--files-per-task`` sets it) on a private local Ray with 2 CPUs, per CPU-second of the Ray
  worker processes (the children of the raylet, read from ``/proc``: the tasks, their threads and Ray's own
  work in them); the driver (Ray Data's scheduler) is reported apart as ``driver_cpu_s_per_1000``;
- ``s3_cog``: ``--cogs`` copies of a real NAIP GeoTIFF (934x723, 4 bands, 512-pixel deflate tiles and an
  overview: a COG's layout) planned and read as 224-pixel windows by the same stages (GDAL range reads with
  ``storage.gdal_options``), per CPU-second of this process, with GDAL's range requests and KiB per window.

``new`` is the code as it is (small chips read many at a time by :func:`rsclip.runtime.reads.read_many`);
``s3fs`` turns that prefetch off, so each chip is one s3fs GET in ``plan_chip`` as before issue 26. The target
(issue 26): >= 600 chips per CPU-second of the reading processes. The last line is one JSON object.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

BUCKET = "reading"
NAIP = common.DATA / "geotiff" / "m_4709963_se_14_1_20200831.tif"
TICKS = os.sysconf("SC_CLK_TCK")


def plan_stage(batch: dict, options: dict, prefetch: bool = True) -> dict:
    """``planning.plan_files``; without ``prefetch`` every small chip is fetched alone by ``plan_chip`` (s3fs)."""
    from rsclip.ingest import planning

    if prefetch:
        return planning.plan_files(batch, options)
    saved = planning.prefetch
    planning.prefetch = lambda sources: {}
    try:
        return planning.plan_files(batch, options)
    finally:
        planning.prefetch = saved


def inproc_rate(batch: dict, preprocess: dict, prefetch: bool) -> float:
    """Chips per CPU-second of this process through plan + read."""
    import numpy as np

    from rsclip.geo import raster
    from rsclip.ingest import batch as B, reading

    start = time.process_time()
    out = reading.read_tiles(plan_stage(batch, asdict(raster.RasterOptions()), prefetch), preprocess)
    elapsed = time.process_time() - start
    assert (np.asarray(out[B.STATUS]) == B.READY).all()
    return len(out[B.STATUS]) / elapsed


def cog_rate(batch: dict, preprocess: dict) -> dict[str, float]:
    """Windows per CPU-second of this process: NAIP GeoTIFFs (COG layout) on S3 planned and read by the pipeline's
    stages (GDAL range reads under ``storage.gdal_options``), and GDAL's HTTP requests and bytes per window (its
    debug log: one ``Downloading`` line per range request)."""
    import numpy as np

    from rsclip.geo import raster
    from rsclip.ingest import batch as B, reading

    import logging

    class Count(logging.Handler):  # GDAL's debug lines reach Python logging through rasterio
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.spans: list[str] = []

        def emit(self, record):
            text = record.getMessage()
            if "Downloading " in text:
                self.spans.append(text.rsplit("Downloading ", 1)[1].split(" ", 1)[0])

    counter, logger = Count(), logging.getLogger("rasterio")
    level, saved = logger.level, os.environ.get("CPL_DEBUG")
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    os.environ["CPL_DEBUG"] = "ON"
    try:
        start = time.process_time()
        out = reading.read_tiles(plan_stage(batch, asdict(raster.RasterOptions())), preprocess)
        elapsed = time.process_time() - start
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        os.environ.pop("CPL_DEBUG") if saved is None else os.environ.__setitem__("CPL_DEBUG", saved)
    fetched = sum(int(b) - int(a) + 1 for a, b in (s.split("-") for s in counter.spans if s.count("-") == 1))
    n = int((np.asarray(out[B.STATUS]) == B.READY).sum())
    assert n == len(out[B.STATUS]), set(out[B.STATUS])
    return {"s3_cog_windows_per_cpu_s": n / elapsed, "s3_cog_requests_per_window": len(counter.spans) / n,
            "s3_cog_kib_per_window": fetched / 1024 / n}


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of ``pids`` still alive (``/proc/<pid>/stat``)."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def raylet_pid() -> int:
    import ray

    node = ray._private.worker._global_node  # the local node this driver started
    return node.all_processes["raylet"][0].process.pid


def ray_rate(items: list[dict], preprocess: dict, files_per_task: int, prefetch: bool,
             batch_size: int) -> dict[str, float]:
    """Chips per CPU-second of the Ray workers (and per wall-second) through plan + read as read tasks."""
    import ray
    from ray.data import TaskPoolStrategy

    from rsclip.geo import raster
    from rsclip.ingest import reading

    args = {"num_cpus": 1, "batch_format": "numpy", "compute": TaskPoolStrategy(size=2)}
    raylet = raylet_pid()
    before = cpu_seconds(children(raylet))
    driver0, wall0 = time.process_time(), time.perf_counter()
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // files_per_task))
    ds = ds.map_batches(plan_stage, fn_kwargs={"options": asdict(raster.RasterOptions()), "prefetch": prefetch},
                        batch_size=files_per_task, **args)
    # as the job: whole blocks, decoded batch_size rows at a time (a batch_size here would set the files a task takes)
    ds = ds.map_batches(reading.read_slices, fn_kwargs={"preprocess": preprocess, "rows": batch_size},
                        batch_size=None, **args)
    n = sum(len(b["status"]) for b in ds.iter_batches(batch_format="numpy", batch_size=None))
    wall, driver = time.perf_counter() - wall0, time.process_time() - driver0
    after = cpu_seconds(children(raylet))
    workers = sum(after[p] - before.get(p, 0.0) for p in after)
    assert n == len(items), (n, len(items))
    return {"per_cpu_s": n / workers, "per_wall_s": n / wall, "driver_cpu_s_per_1000": 1000 * driver / n}


def ray_arm(name: str, items, preprocess, fpt: int, prefetch: bool, batch_size: int) -> Arm:
    def run() -> dict[str, float]:
        got = ray_rate(items, preprocess, fpt, prefetch, batch_size)
        return {f"{name}_tiles_per_cpu_s": got["per_cpu_s"], f"{name}_tiles_per_wall_s": got["per_wall_s"],
                f"{name}_driver_cpu_s_per_1000": got["driver_cpu_s_per_1000"]}
    return Arm(name, run)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--chips", type=int, default=512, help="chips uploaded and read back per run (default 512)")
    p.add_argument("--files-per-task", type=int, nargs="+", default=[16, 64],
                   help="files per planning task, one Ray arm each (default 16 64)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per read_tiles batch (default 64)")
    p.add_argument("--no-ray", action="store_true", help="only the in-process arms")
    p.add_argument("--cogs", type=int, default=8, help="copies of the NAIP GeoTIFF read per round (0: none)")
    args = p.parse_args(argv)
    bench = Bench("reading", args, needs=[common.path_need(common.RSICD_IMAGES), common.path_need(NAIP),
                                          common.binary_need("weed")]).start()

    from bench.scaling import listed_batch
    from infra.local_stack import SeaweedFS, environment
    from rsclip.model.preprocess import ImagePreprocess

    preprocess = asdict(ImagePreprocess())
    files = sorted(common.RSICD_IMAGES.glob("*.jpg"))[:: max(1, 2100 // args.chips)][: args.chips]
    with tempfile.TemporaryDirectory() as tmp, SeaweedFS(Path(tmp) / "seaweedfs", buckets=(BUCKET,)) as s3, \
            environment(s3.env):
        batch = listed_batch(common.upload_chips(s3.client(), BUCKET, "chips", files))
        arms = [Arm("inproc_new", lambda: inproc_rate(batch, preprocess, True)),
                Arm("inproc_s3fs", lambda: inproc_rate(batch, preprocess, False))]
        if args.cogs:
            cogs = listed_batch(common.upload_chips(s3.client(), BUCKET, "cogs", [NAIP] * args.cogs))
            arms.append(Arm("s3_cog", lambda: cog_rate(cogs, preprocess)))
        ratios = {"inproc_new_over_s3fs": ("inproc_new", "inproc_s3fs")}
        if not args.no_ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            items = [{"uri": str(u), "size": int(s)} for u, s in zip(batch["uri"], batch["size"])]
            for fpt in args.files_per_task:
                arms.append(ray_arm(f"ray_new_fpt{fpt}", items, preprocess, fpt, True, args.batch_size))
            fpt = args.files_per_task[0]
            arms.append(ray_arm(f"ray_s3fs_fpt{fpt}", items, preprocess, fpt, False, args.batch_size))
            ratios[f"ray_new_over_s3fs_fpt{fpt}"] = (f"ray_new_fpt{fpt}_tiles_per_cpu_s",
                                                     f"ray_s3fs_fpt{fpt}_tiles_per_cpu_s")
        try:
            figures = bench.rounds(arms)
        finally:
            if not args.no_ray:
                ray.shutdown()
    targets = [Target("inproc_new", ">=", 600)]
    if not args.no_ray:
        targets.append(Target(f"ray_new_fpt{args.files_per_task[0]}_tiles_per_cpu_s", ">=", 600))
    bench.finish(figures, ratios=ratios, targets=targets, constants={
        "chips": len(files), "batch_size": args.batch_size, "obstore": _installed("obstore")})
    return 0


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
