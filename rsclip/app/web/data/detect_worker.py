"""One detection run in its own process: ``python -m rsclip.app.web.data.detect_worker --db DB --label L``.

The web app (:mod:`rsclip.app.web.data.detection_runs`) starts this so that a run never blocks or burdens the
server: Ray starts (or is joined) here, the probe trains and the table is scored here, and the process can be
stopped. It takes the flags of :class:`rsclip.detect.pipeline.DetectConfig` and ``--ray-address`` (default:
a private local Ray, as ``jobs/detect.py``), and prints one JSON object a line on stdout:

- ``{"event": "plan", "parts": N, "done_before": M}`` once the probe is trained;
- ``{"event": "rows", "rows": N}`` as detections are committed, ``{"event": "part"}`` per part recorded;
- ``{"event": "done", "summary": {...}}`` (:class:`~rsclip.detect.pipeline.DetectSummary`) and exit 0, or
  ``{"event": "error", "message": "..."}`` and exit 2 for an expected failure (1 for anything else).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from rsclip.runtime import reporting
from rsclip import errors
from rsclip.detect.pipeline import DetectConfig, run_detection
from rsclip.runtime import cluster, flags

PIPELINE_LOGGER = "rsclip.detect.pipeline"


def emit(**fields) -> None:
    """Print one progress line."""
    print(json.dumps(fields, default=str), flush=True)


class ProgressLines(logging.Handler):
    """Turns the detection pipeline's log records into progress lines (the plan, rows, parts)."""

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102 - logging's interface
        text, args = str(record.msg), record.args if isinstance(record.args, tuple) else ()
        if text.startswith("probe ") and len(args) >= 5:
            emit(event="plan", parts=int(args[3]), done_before=int(args[4]), metrics=args[2])
        elif text.startswith("committed ") and len(args) >= 2:
            emit(event="rows", rows=int(args[1]))
        elif text.startswith("recorded part"):
            emit(event="part")
        else:
            emit(event="log", message=record.getMessage()[:300])


def parse_args(argv: list[str] | None):
    """``(DetectConfig, ray address)`` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m rsclip.app.web.data.detect_worker",
                                     description=__doc__.splitlines()[0])
    flags.add_arguments(parser, DetectConfig, required=("db", "label"))
    parser.add_argument("--ray-address", default=None, help="Ray cluster to use (default: a private local one)")
    args = parser.parse_args(argv)
    return flags.from_arguments(args, DetectConfig), args.ray_address


def main(argv: list[str] | None = None) -> int:
    """Run one detection and report it as JSON lines; returns the exit status."""
    logger = logging.getLogger(PIPELINE_LOGGER)
    logger.setLevel(logging.INFO)
    logger.addHandler(ProgressLines())
    logger.propagate = False
    try:
        cfg, address = parse_args(argv)
        summary = run_detection(cfg, ray_address=address or cluster.job_address() or cluster.LOCAL)
    except errors.RsclipError as exc:
        emit(event="error", message=reporting.one_line(exc, 300))
        return 2
    except Exception as exc:  # reported to the page as one line; the traceback stays in this process's stderr
        emit(event="error", message=f"{type(exc).__name__}: {reporting.one_line(exc, 300)}")
        raise
    emit(event="done", summary=asdict(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
