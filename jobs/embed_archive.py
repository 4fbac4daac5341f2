"""Embed an archive (s3:// prefix or local folder) into a LanceDB tile table with Ray Data.

    ray job submit --working-dir . -- python jobs/embed_archive.py --archive s3://bucket/naip --db s3://bucket/tables
    python jobs/embed_archive.py --archive ./images --db ./tables          # local Ray

Exit status: 0 when the job finished (bad files are recorded in <table>_errors), 2 for a systemic fault
(store unreachable, wrong credentials, missing bucket, unknown model, table of another model).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a plain script from a checkout or a Ray working_dir
    sys.path.insert(0, ROOT)

from rsclip import raster, store  # noqa: E402
from rsclip.embed import EmbedConfig, EmbedSetupError, run_embedding  # noqa: E402
from rsclip.model import DEFAULT_MODEL  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def parse_args(argv: list[str] | None = None) -> EmbedConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    io = p.add_argument_group("input and output")
    io.add_argument("--archive", required=True, help="s3://bucket/prefix or a local folder (walked recursively)")
    io.add_argument("--db", required=True, help="LanceDB location: s3://bucket/prefix or a local folder")
    io.add_argument("--table", default=store.DEFAULT_TABLE, help="tile table name (default: %(default)s)")
    io.add_argument("--model", default=DEFAULT_MODEL, help="hub id, save_pretrained folder or s3:// prefix")
    tiles = p.add_argument_group("tiling")
    tiles.add_argument("--tile-size", type=int, default=raster.DEFAULT_TILE_SIZE, help="grid window, pixels")
    tiles.add_argument("--overlap", type=int, default=0, help="grid overlap, pixels")
    tiles.add_argument("--max-chip", type=int, default=raster.DEFAULT_MAX_CHIP,
                       help="files up to this many pixels a side are one tile (default: %(default)s)")
    tiles.add_argument("--bands", type=_ints, default=None, help="1-based bands, e.g. 4,3,2 (default: first three)")
    tiles.add_argument("--scale", type=_floats, default=None,
                       help="lo,hi stretch for non-uint8 data (default: per-scene 2-98 percentiles)")
    run = p.add_argument_group("resources")
    run.add_argument("--batch-size", type=int, default=None,
                     help="images per embedder call (default 64, or 256 with --gpus-per-actor)")
    run.add_argument("--num-actors", type=int, default=1, help="embedder actors")
    run.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per embedder actor")
    run.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per embedder actor")
    run.add_argument("--torch-threads", type=int, default=None, help="intra-op threads per actor on CPU")
    run.add_argument("--read-cpus", type=float, default=1.0, help="CPUs per planning/decoding task")
    run.add_argument("--read-tasks", type=int, default=None, help="most planning/decoding tasks at once")
    run.add_argument("--commit-rows", type=int, default=512, help="tiles per table commit")
    p.add_argument("--index", choices=("auto", "always", "never"), default="auto",
                   help="build/refresh the ANN index after writing (default: %(default)s)")
    p.add_argument("--progress", action="store_true", help="show Ray Data progress bars")
    a = p.parse_args(argv)
    try:
        options = raster.RasterOptions(tile_size=a.tile_size, overlap=a.overlap, bands=a.bands,
                                       scale=a.scale, max_chip=a.max_chip)
        config = EmbedConfig(
            archive=a.archive, db=a.db, table=a.table, model=a.model, raster=options, batch_size=a.batch_size,
            num_actors=a.num_actors, cpus_per_actor=a.cpus_per_actor, gpus_per_actor=a.gpus_per_actor,
            torch_threads=a.torch_threads, read_cpus=a.read_cpus, read_tasks=a.read_tasks, commit_rows=a.commit_rows, index=a.index,
        )
    except ValueError as exc:
        p.error(str(exc))
    return config, a.progress


def runtime_env() -> dict | None:
    """Under ``ray job submit --working-dir`` the workers already have the code; a plain ``python`` driver
    (local Ray, or RAY_ADDRESS pointing at a cluster) ships the rsclip package to them."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return None
    return {"py_modules": [os.path.join(ROOT, "rsclip")]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rsclip").setLevel(logging.INFO)  # progress: one line per table commit
    config, progress = parse_args(argv)
    try:
        # RAY_ADDRESS: set by `ray job submit` or by the user; without it a private local cluster is started
        summary = run_embedding(config, progress=progress, ray_address=os.environ.get("RAY_ADDRESS") or "local",
                                runtime_env=runtime_env())
    except EmbedSetupError as exc:
        print(f"embed_archive: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(summary.to_text(), flush=True)
    print("summary: " + summary.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
