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

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a plain script from a checkout or a Ray working_dir
    sys.path.insert(0, ROOT)

from rsclip.runtime.jobs import JobEntry  # noqa: E402
from rsclip.detect.pipeline import DetectConfig, run_detection  # noqa: E402

JOB = JobEntry("detect", DetectConfig, run_detection, __doc__, required=("db", "label"))
parse_args, main = JOB.parse_args, JOB.main

if __name__ == "__main__":
    sys.exit(main())
