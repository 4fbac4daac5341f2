"""Score every tile of a table for a label set: a linear probe on the labelled embeddings, run with Ray Data.

    ray job submit --working-dir . -- python jobs/detect.py --db s3://bucket/tables --label solar-farms
    python jobs/detect.py --db ./tables --label ponds --background 500          # a private local Ray

Label tiles first (``rsclip label add DB LABEL --positive ID... --negative ID...``). Every field of
``rsclip.detect.pipeline.DetectConfig`` is a flag. Writes ``<table>_detections`` (one row per tile and label;
a rerun resumes and never duplicates), prints the probe's cross-validated quality and one ``summary: {json}``
line. Exit status 2 with one line for an expected failure (unknown table or label set, a label set without
negatives and without --background, unreachable store).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a plain script from a checkout or a Ray working_dir
    sys.path.insert(0, ROOT)

from rsclip.runtime import cluster, flags  # noqa: E402
from rsclip.detect.pipeline import DetectConfig, run_detection  # noqa: E402
from rsclip.errors import run_reporting  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[DetectConfig, bool]:
    """The job's config and whether to show progress bars, from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_arguments(parser, DetectConfig, required=("db", "label"))
    parser.add_argument("--progress", action="store_true", help="show Ray Data progress bars")
    args = parser.parse_args(argv)
    try:
        return flags.from_arguments(args, DetectConfig), args.progress
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    def work() -> None:
        cfg, progress = parse_args(argv)
        summary = run_detection(cfg, progress=progress, ray_address=cluster.job_address() or cluster.LOCAL)
        print(summary.to_text(), flush=True)
        print("summary: " + summary.to_json(), flush=True)

    return run_reporting("detect", work)


if __name__ == "__main__":
    sys.exit(main())
