"""The ``rsclip detect``, ``review`` and ``suggest`` commands: score every tile for a label set, list its detections.

    rsclip detect DB LABEL [--background N] [--c C] [--seed S] [--read-cpus C] ...   (the flags of jobs/detect.py)
    rsclip review DB LABEL [--min-score S] [--bbox ...] [--near ...] [--polygon P] [--where SQL] [--date RANGE]
                  [-k N] [--json]
    rsclip suggest DB LABEL [-k N] [--json]

``detect`` runs the detection job (:func:`rsclip.detect.pipeline.run_detection`) from this process: on the
Ray cluster of ``RAY_ADDRESS`` when it is set, else on a private local Ray. Its flags are the job's
(:class:`~rsclip.detect.pipeline.DetectConfig`'s fields, ``--db`` and ``--label`` being DB and LABEL here).
``review`` prints the detections best first (highest logit): tile id, uri, score, logit and the centre of the
tile's footprint (``lon``, ``lat``: the middle of its WGS84 bounds, the centroid of a parallelogram tile).
``suggest`` prints the tiles to label next (:mod:`rsclip.search.suggest`): the unlabelled tiles ranked highest
and those the probe is least sure of, with the same columns and ``why``. Both answer through a running
``rsclip api`` when given one (``--api URL`` or ``$RSCLIP_API``), printing what they print alone.
"""

from __future__ import annotations

import argparse
import json

from rsclip.app.api import client
from rsclip.app.cli.remote import add_api_option, ask, ask_review, route
from rsclip.app.cli.options import add_area_arguments, add_db_arguments, add_time_arguments, area, with_table
from rsclip.app.cli.output import print_json, print_table, records, say
from rsclip.errors import InvalidInput
from rsclip.runtime import flags, jobs

SHOWN = ("id", "uri", "score", "logit", "lon", "lat")
POSITIONAL = ("db", "label")  # DetectConfig fields given as DB and LABEL


def cmd_detect(args: argparse.Namespace) -> None:
    """``rsclip detect``: the detection job on ``RAY_ADDRESS`` or a private local Ray; prints its summary."""
    from rsclip.detect.pipeline import DetectConfig, run_detection
    from rsclip.runtime import cluster

    config = flags.from_arguments(args, DetectConfig)
    summary = run_detection(config, progress=jobs.wants_progress(args),
                            ray_address=cluster.job_address() or cluster.LOCAL)
    say(args, json.loads(summary.to_json()), summary.to_text())


def cmd_review(args: argparse.Namespace) -> None:
    """``rsclip review``: the ``-k`` best detections of a label set under the area, time and score filters
    (through a running service when given one: ``--api`` or ``$RSCLIP_API``)."""
    if args.k < 0:
        raise InvalidInput(f"-k must be 0 (all) or more, got {args.k}")
    url = client.api_url(args.api)
    if url is not None:
        rows = ask_review(url, args, area(args))
    else:
        from rsclip.search.review import review_detections

        frame = review_detections(args.db, args.label, min_score=args.min_score, table=args.table, **area(args))
        frame = frame.head(args.k) if args.k else frame
        rows = records(frame.drop(columns=["footprint"], errors="ignore"))
    rows = [with_position(row) for row in rows]
    if args.json:
        print_json(rows)
        return
    print_table([{c: row[c] for c in SHOWN if c in row} for row in rows], floats="{:.6g}")


def with_position(row: dict) -> dict:
    """A detection's row with ``lon`` and ``lat`` (its tile's centre; null without georeference) after its
    score."""
    centre = {"lon": middle(row.get("lon_min"), row.get("lon_max")), "lat": middle(row.get("lat_min"),
                                                                                  row.get("lat_max"))}
    items = list(row.items())
    return dict(items[:3] + list(centre.items()) + items[3:])


def middle(low, high) -> float | None:
    return None if low is None or high is None else (low + high) / 2


def cmd_suggest(args: argparse.Namespace) -> None:
    """``rsclip suggest``: the ``-k`` top-ranked and ``-k`` least certain unlabelled tiles of a label set
    (through a running service when given one)."""
    url = client.api_url(args.api)
    if url is not None:
        rows = ask(url, f"{route('suggest', args.label)}?k={args.k}", args)["results"]
    else:
        from rsclip.search.suggest import suggest_labels

        rows = records(suggest_labels(args.db, args.label, k=args.k, table=args.table))
    if args.json:
        print_json(rows)
        return
    print_table([{c: row[c] for c in ("why", *SHOWN) if c in row} for row in rows], floats="{:.6g}")


def add_suggest_parser(sub) -> None:
    """The ``suggest`` sub-command: DB, LABEL, ``-k`` and ``--json``."""
    s = with_table(sub.add_parser("suggest", help="tiles to label next: the top-ranked and the least certain"))
    s.add_argument("label", metavar="LABEL", help="the label set (rsclip detect DB LABEL first)")
    s.add_argument("-k", type=int, default=10, help="tiles of each kind (default: %(default)s)")
    add_api_option(s)
    s.set_defaults(run=cmd_suggest)


def add_detect_parser(sub) -> None:
    """The ``detect`` sub-command: DB, LABEL and the flags of the detection job."""
    d = sub.add_parser("detect", help="score every tile for a label set (the detection job, on Ray)",
                       description="Train a linear probe on a label set and score every tile of the table "
                                   "(jobs/detect.py): on RAY_ADDRESS when set, else on a private local Ray.")
    d.add_argument("db", metavar="DB", help="database: the folder (local path or s3:// URI) that holds the tables")
    d.add_argument("label", metavar="LABEL", help="the label set to train on (rsclip label add ...)")
    from rsclip.detect.pipeline import DetectConfig  # the job's own flags: imported for this command only

    flags.add_arguments(d, DetectConfig, exclude=POSITIONAL)
    jobs.add_progress_argument(d)
    d.add_argument("--json", action="store_true", help="the summary as JSON")
    d.set_defaults(run=cmd_detect)


def add_review_parser(sub) -> None:
    """The ``review`` sub-command: DB, LABEL, the score, area and time filters, ``-k`` and ``--json``."""
    r = add_db_arguments(sub.add_parser("review", help="the detections of a label set, best first"))
    r.add_argument("label", metavar="LABEL", help="the label set whose detections to list (rsclip detect first)")
    r.add_argument("--min-score", type=float, help="detections scoring at least this (0..1)")
    r.add_argument("-k", type=int, default=20, help="detections to print, best first (0: all; default: %(default)s)")
    add_area_arguments(r)
    add_time_arguments(r)
    r.add_argument("--json", action="store_true", help="machine-readable JSON output (every column)")
    add_api_option(r)
    r.set_defaults(run=cmd_review)
