"""The detection job's scoring rate and driver memory on a large synthetic tile table (issue 15, Performance).

    python bench/detect.py                        # 1M rows, then grown to 4M for the driver-memory check
    python bench/detect.py --rows 20000 --grow-to 80000 --repeats 1 --warmup 0    # a smoke run

Data: ``--rows`` clustered unit vectors (``--clusters`` Gaussian clusters on the sphere, as bench/query.py
makes them) with random WGS84 bounds, written through ``tiles.add_tiles``, then given the BTREE indexes the
embedding job leaves on every table (no vector index: the detection job needs none). A label set:
``--labels`` rows of cluster 0 positive, as many random rows negative.

Arms, interleaved per round (bench/common.py):

- ``ray``: the detection job (``rsclip.detect.pipeline.run_detection``) in a fresh driver process on a
  private local Ray, the detections tables dropped first, so every round scores and writes every row;
  ``ray_rows_s`` is its scoring phase (Ray Data tasks reading Lance fragments and writing the detections as
  fragments, the driver's commits of their metadata), Ray's start-up excluded; ``driver_rss_mb`` the
  driver's peak RSS; ``commit_s`` the driver's time in commits, ``commits`` their number and
  ``received_kb`` what the scoring tasks sent the driver (no detection row: one report per part);
- ``numpy``: one process reading the same Lance table (the same columns) and doing the same
  matrix-vector product and sigmoid in numpy, nothing written: ``numpy_rows_s``.

``ratio`` = ray / numpy per round (target >= 0.8 on a 2-core machine). Then the table grows to ``--grow-to``
rows and the job runs once more: ``driver_rss_ratio`` = its driver's peak RSS over the median at ``--rows``
(target <= 1.2: the driver holds parts, never rows). The last line is one JSON object with ``rows,
ray_rows_s, numpy_rows_s, ratio, driver_rss_ratio, cv_ap`` among the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

CHUNK = 100_000
NO_VECTOR_INDEX = 2**62  # min_rows of build_index: never a vector index
LABEL = "bench"
TARGETS = [Target("ratio", ">=", 0.8, "the Ray job keeps pace with one numpy process"),
           Target("driver_rss_ratio", "<=", 1.2, "driver memory flat as rows grow")]
# The driver process of the ``ray`` arm: the real job on a private local Ray, its summary and peak RSS
# (common.memory_mib("VmHWM"): ru_maxrss would also count the bench's own memory at the fork).
DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench.common import memory_mib
from rsclip.detect.pipeline import DetectConfig, run_detection
config = DetectConfig(**json.loads(sys.argv[2]))
summary = run_detection(config)
rss_mb = memory_mib("VmHWM")
print("DRIVER " + json.dumps({"rows_per_s": summary.rows_per_s, "rows": summary.rows_scored,
                              "cv_ap": summary.metrics.get("cv_ap"), "rss_mb": rss_mb,
                              "commits": summary.commits, "commit_s": summary.commit_seconds,
                              "received_kb": summary.received_bytes / 1024.0}), flush=True)
"""


def write_rows(table, rng, start: int, n: int, centers, spread: float, dim: int) -> list[int]:
    """Append rows ``start .. start+n`` (clustered vectors, random bounds); returns the rows of cluster 0."""
    import numpy as np

    from bench.query import random_bounds
    from rsclip.table import tiles

    members = []
    for first in range(start, start + n, CHUNK):
        m = min(CHUNK, start + n - first)
        cluster = rng.integers(0, len(centers), m)
        vectors = centers[cluster] + rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        i = np.arange(first, first + m)
        tiles.add_tiles(table, {
            tiles.URI: np.array([f"s3://bench/scene-{j // 64:06d}.tif" for j in i]),
            tiles.X: (i % 64).astype(np.int32) * 224, tiles.Y: np.zeros(m, np.int32),
            tiles.WIDTH: np.full(m, 224, np.int32), tiles.HEIGHT: np.full(m, 224, np.int32),
            tiles.VECTOR: vectors.astype(np.float32), **random_bounds(rng, m)})
        members += [int(j) for j in i[cluster == 0]]
    return members


def index_scalars(db: Path) -> None:
    """The BTREE indexes every embedded table has (the embedding job builds them at its end): the job finds
    its labelled tiles through the ``id`` index; without it, the driver scans every id (its memory then
    grows with the table). No vector index: the detection job needs none."""
    from rsclip.table import index

    t0 = time.perf_counter()
    state = index.build_index(db, min_rows=NO_VECTOR_INDEX)
    print(f"indexed in {time.perf_counter() - t0:.1f}s: {state.action}", flush=True)


def build(args, db: Path) -> tuple[object, object, object]:
    """A fresh table of ``--rows`` rows and the label set; returns (table, the generator where the table
    ends, the cluster centers): what ``--grow-to`` continues with."""
    import numpy as np

    from rsclip.table import labels, tiles

    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    shutil.rmtree(db, ignore_errors=True)
    table = tiles.create_table(db, model="synthetic", dim=args.dim)
    t0 = time.perf_counter()
    members = write_rows(table, rng, 0, args.rows, centers, args.spread, args.dim)
    print(f"wrote {args.rows} rows in {time.perf_counter() - t0:.1f}s", flush=True)
    index_scalars(db)
    ids = tiles.open_table(db).to_lance().take(list(range(0, args.rows, max(1, args.rows // 1000))), columns=[tiles.ID])
    chosen = members[: args.labels]
    positive = [tiles.tile_id(f"s3://bench/scene-{j // 64:06d}.tif", (j % 64) * 224, 0, 224, 224) for j in chosen]
    negative = [i for i in ids.column(tiles.ID).to_pylist() if i not in positive][: args.labels]
    labels.add_labels(db, LABEL, positive, negative)
    return table, rng, centers


def ray_arm(args, db: Path) -> dict:
    """One detection job in a fresh driver (tables of earlier rounds dropped first)."""
    from rsclip.table import detections, tiles

    conn = tiles.connect(db)
    for name in (detections.detections_table_name(tiles.DEFAULT_TABLE), detections.progress_table_name(tiles.DEFAULT_TABLE)):
        if name in tiles.table_names(conn):
            conn.drop_table(name)
    config = {"db": str(db), "label": LABEL, "rows_per_task": args.rows_per_task, "read_tasks": args.read_tasks}
    if args.commit_rows:
        config["commit_rows"] = args.commit_rows
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), json.dumps(config)], capture_output=True,
                         text=True, env=env, timeout=args.timeout)
    lines = [line for line in res.stdout.splitlines() if line.startswith("DRIVER ")]
    if res.returncode != 0 or not lines:
        raise SystemExit(f"bench/detect.py: the detection job failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    out = json.loads(lines[-1][len("DRIVER "):])
    return {"ray_rows_s": out["rows_per_s"], "driver_rss_mb": out["rss_mb"], "cv_ap": out["cv_ap"] or 0.0,
            "commits": out["commits"], "commit_s": out["commit_s"], "received_kb": out["received_kb"]}


def numpy_arm(db: Path, weights, bias: float) -> float:
    """Rows/s of one process reading the table's id, bounds and vectors and scoring them in numpy."""
    import numpy as np

    from rsclip.table import rows, tiles
    from rsclip.detect.probe import sigmoid
    from rsclip.detect.scoring import READ_COLUMNS

    dataset = tiles.open_table(db).to_lance()
    t0, n = time.perf_counter(), 0
    for batch in dataset.to_batches(columns=list(READ_COLUMNS), batch_size=65_536):
        vectors = rows.vectors_of(batch.column(tiles.VECTOR))
        sigmoid(vectors @ weights + np.float32(bias))
        n += batch.num_rows
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--grow-to", type=int, default=4_000_000, help="rows for the driver-memory check (0: skip)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.8, help="noise norm relative to the unit cluster center")
    p.add_argument("--labels", type=int, default=20, help="positives (and negatives) labelled")
    p.add_argument("--rows-per-task", type=int, default=65_536)
    p.add_argument("--read-tasks", type=int, default=None)
    p.add_argument("--commit-rows", type=int, default=None, help="detections per commit (default: the job's)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one job may run")
    p.add_argument("--db", default=None, help="table folder (default: a temporary folder, removed at the end)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bench = Bench("detect", args, needs=[common.module_need("sklearn", common.INSTALL_TEST)]).start()
    return common.in_table_folder("detect", args.db, lambda db: measure(args, bench, db))


def measure(args, bench: Bench, db: Path) -> dict:
    import numpy as np

    from rsclip.table import labels, tiles
    from rsclip.detect.probe import train_probe

    print(f"rows={args.rows} grow_to={args.grow_to} dim={args.dim} clusters={args.clusters}", flush=True)
    table, rng, centers = build(args, db)
    probe = train_probe(table, LABEL, labels.read_labels(db, LABEL))
    figures = bench.rounds([Arm("ray", lambda: ray_arm(args, db)),
                            Arm("numpy", lambda: {"numpy_rows_s": numpy_arm(db, probe.weights, probe.bias)})])
    once = {}
    if args.grow_to > args.rows:
        t0 = time.perf_counter()
        write_rows(tiles.open_table(db), rng, args.rows, args.grow_to - args.rows, centers, args.spread, args.dim)
        print(f"grew to {args.grow_to} rows in {time.perf_counter() - t0:.1f}s", flush=True)
        index_scalars(db)
        grown = ray_arm(args, db)
        once["driver_rss_mb_grown"] = grown["driver_rss_mb"]
        once["ray_rows_s_grown"] = grown["ray_rows_s"]
        once.update({f"{k}_grown": grown[k] for k in ("commits", "commit_s", "received_kb")})
        # one measurement, kept among the figures so that its target is judged
        figures["driver_rss_ratio"] = [grown["driver_rss_mb"] / float(np.median(figures["driver_rss_mb"]))]
    return bench.finish(figures, ratios={"ratio": ("ray_rows_s", "numpy_rows_s")}, once=once,
                        constants={"rows": args.rows, "grow_to": args.grow_to}, targets=TARGETS)


if __name__ == "__main__":
    main()
