"""The ``rsclip export`` command: the results of a search, or the detections of a label set, as footprints in a
GeoJSON, GeoParquet or CSV file (local or ``s3://``).

    rsclip export DB (--query TEXT | --image PATH | --positive ID... [--negative ID...] |
                      --detections LABEL [--min-score S]) [--bbox ...] [--near ...] [--polygon P] [--where SQL]
                     [-k N] [--dissolve] --out PATH_or_s3:// [--format geojson|geoparquet|csv]

``--out -`` (or ``/dev/stdout``, a pipe) writes the file to stdout; the summary then goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rsclip.app.cli.options import (add_area_arguments, add_example_arguments, add_time_arguments, area,
                                    with_table)
from rsclip.app.cli.output import quiet_model_loading, say
from rsclip.errors import InvalidInput
from rsclip.runtime import storage
from rsclip.search.export_formats import FORMATS

if TYPE_CHECKING:
    from rsclip.search.export import ExportResult

STDOUT = "/dev/stdout"  # what --out - means


def export_target(args: argparse.Namespace) -> tuple[str, str]:
    """Where and in which format an export command writes: ``--out`` (``-``: stdout) and ``--format`` (else
    from the suffix of ``--out``). Errors name the command line's flags, not the library's keywords."""
    from rsclip.search.export import export_format

    return (STDOUT if args.out == "-" else args.out), export_format(args.out, args.format, option="--format")


def say_written(args: argparse.Namespace, result: ExportResult, text: str) -> None:
    """The summary of an export (``say``), on stderr when the file itself went to stdout."""
    try:
        to_stdout = os.path.samestat(os.stat(result.path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # an s3:// object, or a stdout without a descriptor (captured)
        to_stdout = False
    with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
        say(args, vars(result), text)


def cmd_export(args: argparse.Namespace) -> None:
    """``rsclip export``: write the features of one source (a query, an image, examples or detections)."""
    sources = [args.query is not None, args.image is not None, bool(args.positive or args.negative),
               args.detections is not None]
    if sum(sources) != 1:
        raise InvalidInput("give one of --query TEXT, --image PATH, --positive ID..., --detections LABEL")
    if args.query is not None or args.image is not None or args.positive or args.negative:
        quiet_model_loading()
    from rsclip.search.encoding import Text  # torch takes seconds to import: not for --help
    from rsclip.search.export import export

    query = Text(args.query) if args.query is not None else None
    if args.image is not None:
        query = args.image if storage.is_remote(args.image) else Path(args.image)
    out, format = export_target(args)
    result = export(args.db, out, format=format, dissolved=args.dissolve, table=args.table,
                    query=query, positive=args.positive, negative=args.negative, detections=args.detections,
                    min_score=args.min_score, k=args.k, **area(args))
    say_written(args, result, f"{result.rows} feature(s) written to {result.path} ({result.format})")


def add_export_parser(sub) -> None:
    """The ``export`` sub-command."""
    ex = with_table(sub.add_parser("export", help="results or detections as GeoJSON/GeoParquet/CSV footprints"))
    ex.add_argument("--query", help="text query to export the results of")
    ex.add_argument("--image", help="image path or s3:// URI to export the results of")
    add_example_arguments(ex)
    ex.add_argument("--detections", metavar="LABEL", help="export the detections of a label set")
    ex.add_argument("--min-score", type=float, help="detections scoring at least this (0..1)")
    ex.add_argument("-k", type=int, default=100, help="results of a query or example search (default: %(default)s)")
    add_area_arguments(ex)
    ex.add_argument("--format", choices=FORMATS, help="default: from the suffix of --out")
    ex.add_argument("--out", required=True, help="file or s3:// object to write (-: stdout)")
    ex.add_argument("--dissolve", action="store_true",
                    help="merge touching footprints (max/mean score and tile count per polygon)")
    add_time_arguments(ex)
    ex.set_defaults(run=cmd_export)
