"""The embedding job around a model as fast as a GPU, on CPU: what everything but the model costs (issue 26).

    .venv/bin/python bench/pipeline.py --chips 20000                        # BENCHMARKS.md's baseline
    .venv/bin/python bench/pipeline.py --chips 100000 1000000 --s3-dir /big/disk/weed   # memory at 10x (16 GB)
    .venv/bin/python bench/pipeline.py --chips 2000 --cogs 20 --repeats 1 --warmup 0    # a smoke run
    .venv/bin/python bench/pipeline.py --chips 20000 --chip-side 224   # chips at the model's size: no resize
    .venv/bin/python bench/pipeline.py --listing-only --chips 100000 1000000   # the listing's driver memory
    .venv/bin/python bench/pipeline.py --chips 512 20000 --set batch_size=256 --model-ms 3000  # the driver's CPU:
                                                                      # per wall-second and per tile

The real job, ``rsclip.ingest.pipeline.run_embedding`` (jobs/embed_archive.py's), runs on a private local Ray
over copies of the real RSICD JPEG chips (and, with ``--cogs``, of a real GeoTIFF cut into windows) in a real
SeaweedFS S3 server (infra.local_stack, as bench/embed.py starts it), into a real LanceDB table on that
server (``--index never``; the job's other settings its defaults). Only the model is replaced:

- the driver probes a real tiny CLIP folder (``rsclip.testing.build_tiny_clip`` with 512-d projections, the
  default model's size): the table records real weights and holds 512-d vectors, as with ViT-B/32;
- the embedder actors load their model through ``rsclip.ingest.embedder.load_model``. The Ray ``runtime_env``
  the bench gives the job (``py_modules`` ships rsclip and bench/) has a ``worker_process_setup_hook``,
  :func:`install_standin`, run in every Ray worker process: it binds ``load_model`` of the embedder module,
  when the worker imports it (only the actors do: the read workers never pay for torch), to
  :func:`load_standin`, whose :class:`StandIn` returns one-hot unit rows (row i on axis i mod dim) without
  reading a pixel. The actors still check the real folder's weights (``model_identity``). Each run reads
  back vectors of the table it wrote and fails unless they are the stand-in's (no real model gives one-hot
  rows).

Each run is a fresh child process, the driver, which starts its own local Ray (so the driver's peak memory
is its own, and sizes compare honestly). Figures per archive (``c<N>``: N chips; ``cog``: the GeoTIFF
copies), one per round (rounds interleaved, medians and spreads: bench/common.py):

- ``tiles_per_cpu_s``: tiles embedded over the CPU-seconds of the driver and every process Ray started (its
  process tree, psutil else /proc, sampled every 0.5 s by :class:`TreeSampler`, each process's last figure
  kept: the raylet reaps the workers it retires without their CPU reaching its own children's times, so an
  end-of-run snapshot misses them) during ``run_embedding``; Ray was started just before it
  (``startup_cpu_s`` apart), so listing, probes, table set-up and the writes are in;
- ``tiles_per_core_s``: tiles / (the wall seconds of run_embedding x cores);
- ``driver_us_per_tile``: the driver process's own CPU (all threads) per tile, the bench's counters left out;
- ``driver_rss_mib``: the driver's peak RSS (VmHWM; ru_maxrss of a child also counts its parent's memory at
  the fork, i.e. this bench's); ``driver_rss_half_mib`` and ``driver_rss_end_mib``: its RSS halfway through
  ``run_embedding`` and right after it (memory that grows through a run, or a peak at its end);
  ``driver_shmem_end_mib``: the part of that end figure that is object-store pages the driver has touched
  (RssShmem: shared with the store, counted in RSS, not memory of the driver's own);
- ``received_b_per_tile``: bytes of results the driver received: ``EmbedSummary.received_bytes`` when the job
  reports it, else measured where the current driver takes them in (``TileWriter.write``: numpy nbytes,
  text and bytes by length), else estimated (~2.3 KB a tile); ``received_source`` says which;
- ``commits``, ``commit_s``: ``EmbedSummary.commits`` and ``commit_seconds`` when reported, else counted
  around ``tiles.add_tiles`` in the driver;
- ``s3_cpu_us_per_tile``: the S3 server's CPU per tile, for the record (not in the pipeline's budget).

``driver_rss_ratio``: the driver's peak RSS at the largest ``--chips`` over the smallest, round by round.
``--model-ms MS`` adds an arm ``c<largest>slow``, the largest archive again with a stand-in that sleeps MS per
batch (no CPU; choose MS to about double that run's wall), and :func:`driver_split` tells the driver's CPU
that runs with time (Ray Data's scheduling loop, helper threads: ``driver_cpu_per_wall_s``) from what runs
with tiles (``driver_marginal_us_per_tile``, with two chip sizes), and estimates ``driver_us_per_tile_at_<gpu>``
when one GPU feeds the driver at :data:`GPU_RATES`: on two cores the pipeline runs ~100x slower than a GPU,
so the time-driven part dominates the measured ``driver_us_per_tile``. ``--local-dir``: the chip archives as
local folders (no GETs, no S3 server beside the pipeline: a faster pace on the same cores).
``--listing-only``: no S3: the driver's peak RSS listing a local folder of N empty ``.jpg`` files (1,000 per
subfolder) for each N, as the job does (``tasks``: listing tasks of a private local Ray, the driver keeping the
count) and in the driver (``driver``: ``rsclip.ingest.listing.list_archive``, the baseline); ratios
``listing_rss_ratio`` (tasks, largest N over smallest; target <= 1.2), ``in_driver_rss_ratio``, and
``tasks_vs_driver_rss`` at the largest N. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --code: the rsclip measured (another commit's export: a baseline), imported before this tree's, here and in
# the Ray workers (they inherit the variable)
CODE = Path(os.environ.get("RSCLIP_BENCH_CODE") or ROOT).resolve()
for _path in dict.fromkeys([str(ROOT), str(CODE)]):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BUCKET = "rsclip-bench"
EMBEDDER = "rsclip.ingest.embedder"
DIM = 512  # the default model's embedding size
WARM_CHIPS = 512
RSICD_SIDE = 150  # the side of the RSICD chips (pixels)
COG = common.DATA / "geotiff" / "RGB.byte.tif"
ESTIMATED_B_PER_TILE = 2300  # the numpy batch a tile is in the current driver: 512 float32 and its columns
MIB = 2**20
TARGET_TILES_PER_CPU_S, TARGET_DRIVER_US, TARGET_RECEIVED_B, TARGET_RSS_RATIO = 600.0, 5.0, 100.0, 1.2
MODEL_MS_VARIABLE = "RSCLIP_BENCH_MODEL_MS"  # the stand-in's milliseconds per batch, in the actors' environment
# tiles per second of one GPU for the driver's estimate: an H200 in the real pipeline (README), and the goal
GPU_RATES = {"h200": 14_200, "goal": 40_000}


# --- the stand-in model (runs in the Ray workers) ------------------------------------------------------------

class StandIn:
    """A model as fast as a GPU: ``dim``-d one-hot unit rows, row i on axis i mod ``dim``, no pixel read; with
    ``seconds_per_batch``, a model that slow (a sleep: no CPU), to tell the driver's time-driven CPU apart."""

    def __init__(self, dim: int, seconds_per_batch: float = 0.0):
        self.dim, self.seconds_per_batch = dim, seconds_per_batch

    def encode_images(self, images, batch_size: int | None = None):
        import numpy as np

        if self.seconds_per_batch:
            time.sleep(self.seconds_per_batch)
        n = len(images)
        out = np.zeros((n, self.dim), np.float32)
        out[np.arange(n), np.arange(n) % self.dim] = 1.0
        return out


def load_standin(source: str, device: str | None = None, **_) -> StandIn:
    """In place of ``rsclip.model.clip.load_model``: a :class:`StandIn` of the folder's projection size."""
    config = json.loads((Path(source) / "config.json").read_text())
    return StandIn(int(config["projection_dim"]), float(os.environ.get(MODEL_MS_VARIABLE) or 0) / 1000)


class _StandInOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Loads the embedder module as usual, then binds its ``load_model`` to :func:`load_standin`."""

    def __init__(self):
        self.inner = None

    def find_spec(self, name, path, target=None):
        if name != EMBEDDER:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                self.inner, spec.loader = spec.loader, self
                return spec
        return None

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        module.load_model = load_standin


def install_standin() -> None:
    """Ray's ``worker_process_setup_hook``: the embedder module of this process uses the stand-in model."""
    if EMBEDDER in sys.modules:
        sys.modules[EMBEDDER].load_model = load_standin
    else:
        sys.meta_path.insert(0, _StandInOnImport())


def runtime_env(model_ms: float = 0.0) -> dict:
    """The job's code (as rsclip ships it) plus bench/ and the hook that installs the stand-in (taking
    ``model_ms`` per batch)."""
    return {"py_modules": [str(CODE / "rsclip"), str(ROOT / "bench")],
            "worker_process_setup_hook": f"bench.pipeline.{install_standin.__name__}",
            "env_vars": {MODEL_MS_VARIABLE: str(model_ms)}}


# --- measuring in the driver ---------------------------------------------------------------------------------

def tree_cpu_s(root: int | None = None) -> float:
    """CPU-seconds so far of ``root`` (default: this process) and its descendants: user+system of each live
    process plus what its reaped children left it (each second counted once)."""
    try:
        import psutil
    except ImportError:
        return _proc_tree_cpu_s(root or os.getpid())
    top = psutil.Process(root)
    total = 0.0
    for p in [top, *top.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:  # gone meanwhile: its parent has its time, or will
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _proc_tree_cpu_s(root: int) -> float:
    """:func:`tree_cpu_s` from /proc/<pid>/stat (utime, stime, cutime, cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(entry)], cpu[int(entry)] = int(fields[1]), sum(map(int, fields[11:15])) / tick

    def below(pid: int) -> bool:
        while pid > 1 and pid != root:
            pid = parent.get(pid, 0)
        return pid == root
    return sum(c for pid, c in cpu.items() if below(pid))


def thread_cpu() -> dict[str, float]:
    """CPU-seconds so far of this process's live threads, by thread name: where the driver's time goes."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            name, fields = task.joinpath("stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        name = name.split("(", 1)[1]
        out[name] = out.get(name, 0.0) + sum(map(int, fields.split()[11:13])) / tick
    return out


def cpu_between(before: dict[str, float], after: dict[str, float], top: int = 8) -> dict[str, float]:
    """The ``top`` largest increases from ``before`` to ``after`` (seconds, rounded)."""
    grown = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: round(v, 2) for k, v in sorted(grown.items(), key=lambda kv: -kv[1])[:top] if v > 0.005}


def processes_cpu(root: int) -> dict[tuple[int, float], tuple[str, float]]:
    """``{(pid, start): (title, own user+system seconds)}`` of ``root`` and its live descendants."""
    try:
        import psutil
    except ImportError:
        psutil = None
    out = {}
    if psutil is not None:
        top = psutil.Process(root)
        for p in [top, *top.children(recursive=True)]:
            try:
                with p.oneshot():
                    t, title = p.cpu_times(), (p.cmdline() or [p.name()])[0].split("/")[-1][:60]
                    out[(p.pid, p.create_time())] = (title, t.user + t.system)
            except psutil.Error:
                continue
        return out
    tick, parent, seen = os.sysconf("SC_CLK_TCK"), {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            title, fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        fields = fields.split()
        parent[int(entry)] = int(fields[1])
        seen[(int(entry), float(fields[19]))] = (title.split("(", 1)[1], sum(map(int, fields[11:13])) / tick)
    for (pid, start), value in seen.items():
        up = pid
        while up > 1 and up != root:
            up = parent.get(up, 0)
        if up == root:
            out[(pid, start)] = value
    return out


class TreeSampler:
    """Samples the CPU of this process tree every ``every_s`` (a thread), keeping each process's last figure:
    Ray's raylet reaps its workers without their CPU reaching its own (children's) times, so a worker that
    exits mid-run would be lost to a snapshot at the end. Loses at most ``every_s`` of a process's CPU before
    it exits. ``overhead_s``: the sampling's own CPU (left out of the driver's); ``rss``: this process's RSS
    (MiB) at each sample, by monotonic time."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.last, self.overhead_s, self.rss = every_s, {}, 0.0, []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        start = time.thread_time()
        got, rss = processes_cpu(os.getpid()), (time.monotonic(), common.memory_mib("VmRSS"))
        with self.lock:
            self.last.update(got)
            self.rss.append(rss)
            self.overhead_s += time.thread_time() - start

    def rss_at(self, when: float) -> float:
        """The RSS sampled nearest to monotonic time ``when``."""
        with self.lock:
            return min(self.rss, key=lambda sample: abs(sample[0] - when))[1]

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> "TreeSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def totals(self) -> tuple[float, dict[str, float]]:
        """After a fresh sample: CPU-seconds of every process seen so far, and by title."""
        self.sample()
        by_title: dict[str, float] = {}
        with self.lock:
            for title, cpu in self.last.values():
                by_title[title] = by_title.get(title, 0.0) + cpu
        return sum(by_title.values()), by_title


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM), MiB."""
    return common.memory_mib("VmHWM")


def become_subreaper() -> None:
    """Orphaned descendants (a Ray worker whose raylet went first) become our children, so their CPU counts."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap(limit_s: float = 30.0) -> None:
    """Wait for every child that exits within ``limit_s`` (their CPU then counts in ours)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)


def batch_bytes(batch) -> int:
    """Bytes of a numpy batch: nbytes of each column, text and bytes of object columns by length."""
    import numpy as np

    total = 0
    for column in batch.values():
        arr = np.asarray(column)
        total += sum(len(x) for x in arr if isinstance(x, (str, bytes))) if arr.dtype == object else arr.nbytes
    return total


class DriverCounters:
    """What the job's summary may not report yet, counted in the driver: commits of tiles (``tiles.add_tiles``)
    and their time, bytes the writer took in; the counting's own CPU is kept to leave it out."""

    def __init__(self):
        self.commits, self.commit_s, self.received, self.overhead_s = 0, 0.0, 0, 0.0

    def install(self) -> "DriverCounters":
        from rsclip.ingest import writer
        from rsclip.table import tiles

        add = tiles.add_tiles

        def add_tiles(*args, **kwargs):
            start = time.perf_counter()
            try:
                return add(*args, **kwargs)
            finally:
                self.commits, self.commit_s = self.commits + 1, self.commit_s + time.perf_counter() - start

        tiles.add_tiles = add_tiles
        write = getattr(getattr(writer, "TileWriter", None), "write", None)
        if write is not None:
            def counted(tile_writer, batch):
                start = time.thread_time()
                self.received += batch_bytes(batch)
                self.overhead_s += time.thread_time() - start
                return write(tile_writer, batch)

            writer.TileWriter.write = counted
        return self


def check_standin(db: str, table: str, sample: int = 4096) -> dict:
    """Rows of the table, and whether its first ``sample`` vectors are the stand-in's one-hot rows."""
    import numpy as np

    from rsclip.table import tiles

    t = tiles.open_table(db, table)
    rows = t.count_rows()
    head = t.head(min(sample, rows)).column(tiles.VECTOR).to_pylist() if rows else []
    vectors = np.asarray(head, np.float32).reshape(len(head), -1)
    one_hot = bool(len(head)) and bool(((vectors == 1.0).sum(1) == 1).all() and (vectors.sum(1) == 1.0).all())
    return {"table_rows": rows, "standin_rows_checked": len(head), "standin_ok": one_hot}


def driver_run(spec: dict) -> dict:
    """Child process: the job on a fresh local Ray with the stand-in; its figures (see the module doc)."""
    become_subreaper()
    import ray

    from rsclip.ingest.config import EmbedConfig
    from rsclip.ingest.pipeline import run_embedding
    from rsclip.runtime import cluster

    counters = DriverCounters().install()
    env = runtime_env(spec.pop("model_ms", 0.0))
    config = EmbedConfig(**spec)
    cpu0 = tree_cpu_s()
    cluster.start_ray(cluster.LOCAL, runtime_env=env, log_to_driver=False, quiet=True)
    with TreeSampler() as sampler:
        (cpu1, where1), threads1 = sampler.totals(), thread_cpu()
        self1, wall1, overhead1 = self_cpu_s(), time.monotonic(), sampler.overhead_s
        summary = run_embedding(config, runtime_env=env)
        wall2, self2, overhead2 = time.monotonic(), self_cpu_s(), sampler.overhead_s
        (cpu2, where2), rss = sampler.totals(), peak_rss_mib()
        rss_half, rss_end = sampler.rss_at((wall1 + wall2) / 2), common.memory_mib("VmRSS")
        shmem_end = common.memory_mib("RssShmem")
    where = {"processes": cpu_between(where1, where2), "driver_threads": cpu_between(threads1, thread_cpu())}
    out = {"tiles": summary.embedded, "tiles_planned": summary.tiles_planned, "failed": summary.failed,
           "wall_s": wall2 - wall1, "cpu_s": cpu2 - cpu1 - (overhead2 - overhead1), "startup_cpu_s": cpu1 - cpu0,
           "driver_cpu_s": self2 - self1 - counters.overhead_s - (overhead2 - overhead1), "driver_rss_mib": rss,
           "driver_rss_half_mib": rss_half, "driver_rss_end_mib": rss_end, "driver_shmem_end_mib": shmem_end,
           "where_cpu_s": where, **check_standin(config.db, config.table)}
    received = getattr(summary, "received_bytes", None)
    out["received_source"] = "summary" if received is not None else (
        "measured at TileWriter.write" if counters.received else "estimate")
    out["received_bytes"] = received if received is not None else (
        counters.received or ESTIMATED_B_PER_TILE * summary.embedded)
    commits = getattr(summary, "commits", None)
    out["commit_source"] = "summary" if commits is not None else "counted around tiles.add_tiles"
    out["commits"] = commits if commits is not None else counters.commits
    out["commit_s"] = getattr(summary, "commit_seconds", None) if commits is not None else counters.commit_s
    ray.shutdown()
    reap()
    out["run_cpu_s"] = tree_cpu_s() - cpu0  # start-up, job and shut-down, every process reaped
    return out


def listing_run(payload: str) -> dict:
    """Child process: list a local folder as the job's driver does (``tasks``: listing tasks of a private local
    Ray, :mod:`rsclip.ingest.sources`) or in this process (``driver``: ``list_archive``, the baseline); its
    peak RSS and CPU."""
    from rsclip.ingest import listing, sources
    from rsclip.ingest.config import EmbedConfig
    from rsclip.runtime import cluster

    run = json.loads(payload)
    if run["mode"] == "tasks":
        cluster.start_ray(cluster.LOCAL, quiet=True)
    before, start, cpu = peak_rss_mib(), time.monotonic(), self_cpu_s()
    if run["mode"] == "tasks":
        config = EmbedConfig(db=tempfile.mkdtemp(), archive=run["folder"], read_cpus=0.5)
        files = sources.list_sources(config, sources.check_archive(config)).files
    else:
        files = len(listing.list_archive(run["folder"]))
    return {"files": files, "seconds": time.monotonic() - start, "cpu_s": self_cpu_s() - cpu,
            "rss_before_mib": before, "driver_rss_mib": peak_rss_mib()}


def child(flag: str, payload: str, env: dict | None = None) -> dict:
    """Run this script as a fresh child process (``--driver-run`` or ``--listing-run``); its JSON result."""
    res = subprocess.run([sys.executable, __file__, flag, payload], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=4 * 3600)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{flag} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --- the archives in S3 --------------------------------------------------------------------------------------

def object_name(i: int, filename: str) -> str:
    """The name of an archive's ``i``-th copy of ``filename`` under the archive's prefix or folder (1,000 a
    subfolder)."""
    return f"{i // 1000:04d}/{i:07d}-{filename}"


class Archives:
    """Chip and GeoTIFF archives in the S3 server, uploaded once (a marker object says an upload finished, so
    ``--s3-dir`` keeps them between runs), and fresh table locations, removed after each run."""

    def __init__(self, s3, threads: int, chip_side: int | None = None, local: Path | None = None):
        import boto3
        from botocore.config import Config

        self.client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                                   aws_secret_access_key=s3.secret_key, region_name=s3.env["AWS_REGION"],
                                   config=Config(max_pool_connections=threads + 4))
        self.threads, self.tables, self.chip_side, self.local = threads, 0, chip_side, local

    def _upload(self, name: str, sources: list[Path], n: int) -> str:
        if self.local is not None:
            return self._write_local(name, sources, n)
        marker = f"markers/{name}"
        if self.client.list_objects_v2(Bucket=BUCKET, Prefix=marker).get("KeyCount", 0) == 0:
            bodies = [(f.name, self._body(f)) for f in sources]
            errors: list[BaseException] = []

            def put(first: int) -> None:
                try:
                    for i in range(first, n, self.threads):
                        filename, body = bodies[i % len(bodies)]
                        self.client.put_object(Bucket=BUCKET, Key=f"{name}/{object_name(i, filename)}", Body=body)
                except BaseException as exc:  # noqa: BLE001 - re-raised below in the main thread
                    errors.append(exc)

            start = time.monotonic()
            workers = [threading.Thread(target=put, args=(k,)) for k in range(self.threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            if errors:
                raise errors[0]
            self.client.put_object(Bucket=BUCKET, Key=marker, Body=b"")
            print(f"uploaded {n} objects to s3://{BUCKET}/{name} in {time.monotonic() - start:.0f} s", flush=True)
        return f"s3://{BUCKET}/{name}"

    def _write_local(self, name: str, sources: list[Path], n: int) -> str:
        """``--local-dir``: the archive as a local folder (the same names), written once."""
        folder, marker = self.local / name, self.local / f"{name}.done"
        if not marker.exists():
            bodies = [(f.name, self._body(f)) for f in sources]
            for i in range(n):
                filename, body = bodies[i % len(bodies)]
                path = folder / object_name(i, filename)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
            marker.touch()
        return str(folder)

    def _body(self, path: Path) -> bytes:
        """The bytes uploaded for ``path``: the file itself, or (``--chip-side``) a chip of its pixels resized to
        that side (bicubic) and encoded again as JPEG."""
        if self.chip_side is None or path.suffix.lower() != ".jpg":
            return path.read_bytes()
        import io

        from PIL import Image

        out = io.BytesIO()
        with Image.open(path) as im:
            im.convert("RGB").resize((self.chip_side, self.chip_side), Image.BICUBIC).save(out, "JPEG", quality=90)
        return out.getvalue()

    def chips(self, n: int) -> str:
        side = "" if self.chip_side is None else f"{self.chip_side}px-"
        return self._upload(f"chips-{side}{n}", sorted(common.RSICD_IMAGES.glob("*.jpg")), n)

    def cogs(self, n: int) -> str:
        return self._upload(f"cogs-{n}", [COG], n)

    def fresh_db(self) -> str:
        self.tables += 1
        return f"s3://{BUCKET}/db-{os.getpid()}-{self.tables}"

    def drop(self, uri: str) -> None:
        prefix = uri.split(f"s3://{BUCKET}/", 1)[1] + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


# --- the rounds ----------------------------------------------------------------------------------------------

def figures_of(got: dict, s3_cpu_s: float, cores: int) -> dict:
    """The per-round figures of one run (see the module doc)."""
    tiles = max(got["tiles"], 1)
    return {"tiles_per_cpu_s": got["tiles"] / got["cpu_s"], "tiles_per_core_s": got["tiles"] / (got["wall_s"] * cores),
            "driver_us_per_tile": 1e6 * got["driver_cpu_s"] / tiles, "driver_rss_mib": got["driver_rss_mib"],
            "received_b_per_tile": got["received_bytes"] / tiles, "commits": got["commits"],
            "commit_s": got["commit_s"] or 0.0, "wall_s": got["wall_s"], "cpu_s": got["cpu_s"],
            "driver_cpu_s": got["driver_cpu_s"], "driver_rss_half_mib": got["driver_rss_half_mib"],
            "driver_rss_end_mib": got["driver_rss_end_mib"], "driver_shmem_end_mib": got["driver_shmem_end_mib"],
            "startup_cpu_s": got["startup_cpu_s"], "s3_cpu_us_per_tile": 1e6 * s3_cpu_s / tiles}


def setting(text: str) -> tuple[str, object]:
    """``FIELD=JSON`` (a bare word is a string) as a (field, value) pair of the job's settings."""
    field, _, value = text.partition("=")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


class Runs:
    """Runs of the job with the stand-in over the archives; the sources of the last run's figures."""

    def __init__(self, archives: Archives, s3, model: str, args):
        self.archives, self.s3, self.model, self.args = archives, s3, model, args
        self.sources: dict[str, str] = {}

    def run(self, archive: str, expect: int | None = None, model_ms: float = 0.0) -> dict:
        db = self.archives.fresh_db()
        spec = {"archive": archive, "db": db, "model": self.model, "index": "never", "model_ms": model_ms}
        if self.args.actor_cpus is not None:
            spec["cpus_per_actor"] = self.args.actor_cpus
        spec.update(self.args.set)
        s3_before = tree_cpu_s(self.s3.proc.pid)
        try:
            got = child("--driver-run", json.dumps(spec), self.s3.env)
        finally:
            self.archives.drop(db)
        if not got["standin_ok"] or got["table_rows"] != got["tiles"] or (expect and got["tiles"] != expect):
            raise RuntimeError(f"the run is not the stand-in's, or lost tiles: {got}")
        self.sources = {"received_source": got["received_source"], "commit_source": got["commit_source"]}
        print(f"  {got['tiles']} tiles; CPU-seconds during the job by process: {got['where_cpu_s']['processes']}; "
              f"the driver's by thread: {got['where_cpu_s']['driver_threads']}", flush=True)
        return figures_of(got, tree_cpu_s(self.s3.proc.pid) - s3_before, common.cpus())

    def arm(self, name: str, archive: str, expect: int | None, warm, model_ms: float = 0.0) -> Arm:
        return Arm(name, lambda: {f"{name}_{k}": v for k, v in self.run(archive, expect, model_ms).items()}, warm)


def pipeline_arms(args, runs: Runs) -> list[Arm]:
    """One arm per chip archive (the first warms up on a small one) and one for the GeoTIFF copies."""
    warm_archive = runs.archives.chips(WARM_CHIPS)
    arms = []
    for n in args.chips:
        warm = (lambda: runs.run(warm_archive, WARM_CHIPS)) if not arms else common.NO_WARMUP
        arms.append(runs.arm(f"c{n}", runs.archives.chips(n), n, warm))
    if args.model_ms:
        n = max(args.chips)
        arms.append(runs.arm(f"c{n}slow", runs.archives.chips(n), n, common.NO_WARMUP, args.model_ms))
    if args.cogs:
        arms.append(runs.arm("cog", runs.archives.cogs(args.cogs), None, common.NO_WARMUP))
    return arms


def driver_split(figures: dict, args) -> dict:
    """The driver's CPU split, round by round, into what runs with time and what runs with tiles (with
    ``--model-ms``): ``driver_cpu_per_wall_s`` (a), the driver's extra CPU-seconds per extra wall-second of the
    largest archive run with the slow stand-in over the same run with the fast one (the same tiles, files,
    tasks and commits: only the pace differs, the pipeline busy all along); with two chip sizes also
    ``driver_marginal_us_per_tile`` (b), the driver's extra CPU per extra tile from the smallest to the largest
    archive once a x their extra wall is taken off, and ``driver_us_per_tile_at_<gpu>`` = a / rate + b for
    :data:`GPU_RATES`: an estimate of the driver's CPU per tile when one GPU feeds it at that rate (the fixed
    start-up left out). A round whose slow run was not the longer gives NaN."""
    if not args.model_ms:
        return {}
    small, big = min(args.chips), max(args.chips)
    fast, slow = f"c{big}", f"c{big}slow"
    a = [(c_slow - c_fast) / (w_slow - w_fast) if w_slow > w_fast else float("nan")
         for c_slow, c_fast, w_slow, w_fast in zip(figures[f"{slow}_driver_cpu_s"], figures[f"{fast}_driver_cpu_s"],
                                                   figures[f"{slow}_wall_s"], figures[f"{fast}_wall_s"])]
    out = {"driver_cpu_per_wall_s": a}
    if big != small:
        cpu_big, wall_big = figures[f"c{big}_driver_cpu_s"], figures[f"c{big}_wall_s"]
        cpu_small, wall_small = figures[f"c{small}_driver_cpu_s"], figures[f"c{small}_wall_s"]
        b = [1e6 * (cb - cs - ai * (wb - ws)) / (big - small)
             for cb, cs, wb, ws, ai in zip(cpu_big, cpu_small, wall_big, wall_small, a)]
        out["driver_marginal_us_per_tile"] = b
        for gpu, rate in GPU_RATES.items():
            out[f"driver_us_per_tile_at_{gpu}"] = [1e6 * ai / rate + bi for ai, bi in zip(a, b)]
    return out


def targets(args) -> tuple[dict, list[Target]]:
    """The ratio of peak driver memory across chip sizes, and the issue's targets on the chip archives."""
    out = []
    for n in args.chips:
        out += [Target(f"c{n}_tiles_per_cpu_s", ">=", TARGET_TILES_PER_CPU_S, "chips per CPU-second, all processes"),
                Target(f"c{n}_driver_us_per_tile", "<=", TARGET_DRIVER_US, "driver CPU per tile"),
                Target(f"c{n}_received_b_per_tile", "<=", TARGET_RECEIVED_B, "bytes the driver receives per tile")]
    ratios = {}
    if len(set(args.chips)) > 1:
        ratios["driver_rss_ratio"] = (f"c{max(args.chips)}_driver_rss_mib", f"c{min(args.chips)}_driver_rss_mib")
        out.append(Target("driver_rss_ratio", "<=", TARGET_RSS_RATIO, f"driver peak RSS at {max(args.chips)} "
                                                                      f"chips / at {min(args.chips)}"))
    return ratios, out


def run_pipeline(args, bench: Bench) -> dict:
    from infra.local_stack import SeaweedFS
    from rsclip.testing import build_tiny_clip

    with tempfile.TemporaryDirectory(prefix="rsclip-bench-pipeline-") as tmp:
        model = str(build_tiny_clip(Path(tmp) / "tiny-clip-512", embed_dim=DIM))
        with SeaweedFS(args.s3_dir or Path(tmp) / "seaweedfs", buckets=(BUCKET,)) as s3:
            runs = Runs(Archives(s3, args.upload_threads, args.chip_side, args.local_dir), s3, model, args)
            figures = bench.rounds(pipeline_arms(args, runs))
    figures.update(driver_split(figures, args))
    ratios, checks = targets(args)
    return bench.finish(figures, ratios=ratios, targets=checks,
                        constants={"chips": args.chips, "chip_side": args.chip_side or RSICD_SIDE, "cogs": args.cogs,
                                   "cog_source": COG.name, "dim": DIM,
                                   "model": "stand-in (one-hot rows) in the actors, tiny CLIP folder probed",
                                   "model_ms": args.model_ms, "gpu_rates": GPU_RATES, "set": dict(args.set),
                                   "code": os.environ.get("RSCLIP_BENCH_CODE", "this tree"), **runs.sources})


LISTING_MODES = ("driver", "tasks")


def run_listing(args, bench: Bench) -> dict:
    """``--listing-only``: the driver's peak RSS listing local folders of N empty .jpg files."""
    root = Path(tempfile.mkdtemp(prefix="rsclip-bench-listing-"))
    try:
        arms = []
        for n in args.chips:
            folder = root / f"n{n}"
            for i in range(n):
                if i % 1000 == 0:
                    (folder / f"{i // 1000:04d}").mkdir(parents=True)
                (folder / f"{i // 1000:04d}" / f"{i:07d}.jpg").touch()

            for mode in LISTING_MODES:
                def listed(n=n, folder=folder, mode=mode) -> dict:
                    got = child("--listing-run", json.dumps({"folder": str(folder), "mode": mode}))
                    assert got["files"] == n, got
                    return {f"{mode}{n}_driver_rss_mib": got["driver_rss_mib"], f"{mode}{n}_seconds": got["seconds"],
                            f"{mode}{n}_cpu_us_per_file": 1e6 * got["cpu_s"] / n}
                arms.append(Arm(f"{mode}{n}", listed))
        figures = bench.rounds(arms)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    big, small = max(args.chips), min(args.chips)
    ratios = {"tasks_vs_driver_rss": (f"tasks{big}_driver_rss_mib", f"driver{big}_driver_rss_mib")}
    if big != small:
        ratios["listing_rss_ratio"] = (f"tasks{big}_driver_rss_mib", f"tasks{small}_driver_rss_mib")
        ratios["in_driver_rss_ratio"] = (f"driver{big}_driver_rss_mib", f"driver{small}_driver_rss_mib")
    return bench.finish(figures, ratios=ratios, constants={"files": args.chips, "listing_only": True},
                        targets=[Target("listing_rss_ratio", "<=", TARGET_RSS_RATIO, f"{big} files / {small}")])


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--chips", type=int, nargs="+", default=[100_000],
                   help="chip archive sizes, one arm each (default 100000; two sizes add driver_rss_ratio)")
    p.add_argument("--cogs", type=int, default=0,
                   help=f"copies of {COG.name} (791x718, cut into 224 px windows) as one more arm (default 0)")
    p.add_argument("--chip-side", type=int, default=None,
                   help=f"re-encode the chips at this side before uploading them (default: the RSICD files, "
                        f"{RSICD_SIDE} px, which the job upscales to the model's 224; 224: chips cut at the model's "
                        f"size, no resize)")
    p.add_argument("--listing-only", action="store_true",
                   help="only the listing's driver memory, on local folders of --chips empty files (no S3)")
    p.add_argument("--s3-dir", type=Path, default=None,
                   help="keep SeaweedFS's data here: archives uploaded once are reused by later runs")
    p.add_argument("--local-dir", type=Path, default=None,
                   help="write the chip archives as local folders here instead of S3 (no GETs: a node reading its "
                        "own disk); the table stays in S3. Kept between runs")
    p.add_argument("--upload-threads", type=int, default=32, help="threads uploading the archives (default 32)")
    p.add_argument("--actor-cpus", type=float, default=None,
                   help="CPUs the embedder actor reserves (default: the job's, 1)")
    p.add_argument("--code", type=Path, default=None,
                   help="a folder holding the rsclip package to measure instead of this tree's, e.g. a baseline: "
                        "git archive <commit> rsclip | tar -x -C DIR")
    p.add_argument("--set", type=setting, action="append", default=[], metavar="FIELD=JSON",
                   help="an EmbedConfig field for every run, e.g. --set files_per_task=256 --set batch_size=256")
    p.add_argument("--model-ms", type=float, default=0.0,
                   help="one more arm on the largest archive with a stand-in taking this many ms per batch (a "
                        "sleep): splits the driver's CPU into time-driven and per-tile (driver_split)")
    p.add_argument("--driver-run", help=argparse.SUPPRESS)
    p.add_argument("--listing-run", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.driver_run or args.listing_run:
        got = driver_run(json.loads(args.driver_run)) if args.driver_run else listing_run(args.listing_run)
        print("RESULT " + json.dumps(got), flush=True)
        return 0
    if args.code:
        if not (args.code / "rsclip" / "__init__.py").is_file():
            raise SystemExit(f"bench/pipeline.py: --code {args.code} holds no rsclip package")
        os.environ["RSCLIP_BENCH_CODE"] = str(args.code.resolve())  # the children's (Bench.start imports nothing)
    if min(args.chips) < 1 or args.cogs < 0 or args.model_ms < 0 or (args.chip_side is not None and args.chip_side < 2):
        raise SystemExit("bench/pipeline.py: --chips must be >= 1, --cogs and --model-ms >= 0, --chip-side >= 2")
    if args.listing_only:
        run_listing(args, Bench("pipeline", args).start())
        return 0
    needs = [common.path_need(common.RSICD_IMAGES), common.path_need(COG), common.binary_need("weed"),
             common.module_need("ray", common.INSTALL_TEST)]
    run_pipeline(args, Bench("pipeline", args, needs=needs).start())
    return 0


if __name__ == "__main__":
    sys.exit(main())
