"""The ``rsclip export`` command: the results of a search, or the detections of a label set, as footprints in a
GeoJSON, GeoParquet or CSV file (local or ``s3://``).

    rsclip export DB (--query TEXT | --image PATH | --positive ID... [--negative ID...] |
                      --detections LABEL [--min-score S]) [--bbox ...] [--near ...] [--polygon P] [--where SQL]
                     [-k N] [--dissolve] --out PATH_or_s3:// [--format geojson|geoparquet|csv] [--api URL]

``--out -`` (or ``/dev/stdout``, a pipe) writes the file to stdout; the summary then goes to stderr. Through a
running ``rsclip api`` (``--api URL`` or ``$RSCLIP_API``) the service makes the file and this process writes it
(at most :data:`~rsclip.app.api.settings.MAX_EXPORT_FEATURES` features).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from rsclip.app.api import client
from rsclip.app.cli.options import (add_area_arguments, add_example_arguments, add_time_arguments, area,
                                    with_table)
from rsclip.app.cli.output import quiet_model_loading, say
from rsclip.app.cli.remote import add_api_option, ask_export, upload
from rsclip.errors import InvalidInput
from rsclip.runtime import storage
from rsclip.search.export_formats import FORMATS, export_format

STDOUT = "/dev/stdout"  # what --out - means


def export_target(args: argparse.Namespace) -> tuple[str, str]:
    """Where and in which format an export command writes: ``--out`` (``-``: stdout) and ``--format`` (else
    from the suffix of ``--out``). Errors name the command line's flags, not the library's keywords."""
    return (STDOUT if args.out == "-" else args.out), export_format(args.out, args.format, option="--format")


def say_written(args: argparse.Namespace, written: dict, text: str) -> None:
    """The summary of an export (``say``: its ``path``, ``format`` and ``rows``), on stderr when the file itself
    went to stdout."""
    try:
        to_stdout = os.path.samestat(os.stat(written["path"]), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # an s3:// object, or a stdout without a descriptor (captured)
        to_stdout = False
    with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
        say(args, written, text)


def write_answer(url: str, args: argparse.Namespace, body: dict) -> dict:
    """Write the export file the service at ``url`` makes of ``body`` to ``--out``; what was written (the
    fields of :class:`~rsclip.search.export.ExportResult`)."""
    out, format = export_target(args)
    data, rows = ask_export(url, args, {**body, "format": format})
    storage.write_bytes(out, data)
    return {"path": out, "format": format, "rows": rows}


def cmd_export(args: argparse.Namespace) -> None:
    """``rsclip export``: write the features of one source (a query, an image, examples or detections), through
    a running service when given one (``--api`` or ``$RSCLIP_API``)."""
    sources = [args.query is not None, args.image is not None, bool(args.positive or args.negative),
               args.detections is not None]
    if sum(sources) != 1:
        raise InvalidInput("give one of --query TEXT, --image PATH, --positive ID..., --detections LABEL")
    url = client.api_url(args.api)
    written = write_answer(url, args, export_body(args)) if url is not None else export_here(args)
    say_written(args, written, f"{written['rows']} feature(s) written to {written['path']} ({written['format']})")


def export_here(args: argparse.Namespace) -> dict:
    """``rsclip export`` in this process: what was written."""
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
    return vars(result)


def export_body(args: argparse.Namespace) -> dict:
    """The body of ``POST /api/export`` for ``rsclip export``'s arguments: the same source, options and filters."""
    body = {"dissolve": args.dissolve, "min_score": args.min_score, **client.filter_fields(area(args))}
    if args.detections is not None:
        return {**body, "detections": args.detections}
    body["k"] = args.k
    if args.positive or args.negative:
        return {**body, "positive": args.positive or [], "negative": args.negative}
    return {**body, "image": upload(args.image)} if args.image is not None else {**body, "text": args.query}


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
    add_api_option(ex)
    ex.set_defaults(run=cmd_export)
