"""Embed an archive (s3:// prefix or local folder) or the items of a STAC catalog/API into a LanceDB tile table.

    ray job submit --working-dir . -- python jobs/embed_archive.py --archive s3://bucket/naip --db s3://bucket/tables
    python jobs/embed_archive.py --archive ./images --db ./tables          # local Ray
    python jobs/embed_archive.py --stac https://earth-search.aws.element84.com/v1 --collections sentinel-2-l2a \
        --bbox -97.6,47.0,-97.4,47.2 --datetime 2023-06-01/2023-09-30 --max-cloud 10 --assets visual --db ./tables

Every field of ``rsclip.ingest.config.EmbedConfig`` is a flag. Exit status: 0 when the job finished and
embedded something or found it present (bad files are recorded in <table>_errors), 2 with one line for an
expected failure (store unreachable, wrong credentials, missing bucket, unknown model, table of another model
or of other weights, a cluster too small for the request, a model whose every tile fails for
--max-failed-batches embedding batches in a row, a run in which every tile failed: the line names the first
kinds of failure). Ray's own console lines are off unless --verbose.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a plain script from a checkout or a Ray working_dir
    sys.path.insert(0, ROOT)

from rsclip.runtime.jobs import JobEntry  # noqa: E402
from rsclip.ingest.config import EmbedConfig  # noqa: E402
from rsclip.ingest.pipeline import run_embedding  # noqa: E402

JOB = JobEntry("embed_archive", EmbedConfig, run_embedding, __doc__, required=("db",))
parse_args, main = JOB.parse_args, JOB.main

if __name__ == "__main__":
    sys.exit(main())
