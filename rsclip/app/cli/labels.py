"""The ``rsclip label`` command: label tiles positive or negative in named sets (for example search and
detection), list the sets and their labels, export a set's tiles.

    rsclip label add DB LABEL --positive ID... [--negative ID...] [--note TEXT]
    rsclip label remove DB LABEL (ID... | --all)
    rsclip label list DB [LABEL]                    (the sets; or the labels of one set: tile id, uri, value, ...)
    rsclip label export DB LABEL --out labels.geojson [--format geojson|geoparquet|csv]
"""

from __future__ import annotations

import argparse

import pandas as pd

from rsclip.app.cli.exports import export_target, say_written
from rsclip.app.cli.options import with_table
from rsclip.app.cli.output import print_json, print_table, records, say
from rsclip.errors import InvalidInput
from rsclip.search.export import FORMATS, export_labels
from rsclip.table import labels, rows, tiles


def with_uris(frame: pd.DataFrame, db, table: str) -> pd.DataFrame:
    """The labels in ``frame`` with the ``uri`` of each tile after its id (null for a tile no longer in the
    table): an id alone does not say which image a label is about."""
    found = rows.rows_by_id(tiles.open_table(db, table), frame[tiles.ID], [tiles.URI])
    uris = dict(zip(found.column(tiles.ID).to_pylist(), found.column(tiles.URI).to_pylist()))
    listed = frame.copy()
    listed.insert(listed.columns.get_loc(tiles.ID) + 1, tiles.URI, [uris.get(i) for i in listed[tiles.ID]])
    return listed


def cmd_label(args: argparse.Namespace) -> None:
    """``rsclip label ACTION``: add, remove, list or export labels."""
    if args.action == "add":
        if not args.positive and not args.negative:
            raise InvalidInput("give tile ids with --positive and/or --negative")
        n = labels.add_labels(args.db, args.label, args.positive or (), args.negative or (), table=args.table,
                              note=args.note)
        say(args, {"label": args.label, "written": n}, f"{args.label}: {n} label(s) written")
    elif args.action == "remove":
        if bool(args.ids) == bool(args.all):
            raise InvalidInput("give the tile ids to remove, or --all to remove the whole label set")
        n = labels.remove_labels(args.db, args.label, None if args.all else args.ids, table=args.table)
        say(args, {"label": args.label, "removed": n}, f"{args.label}: {n} label(s) removed")
    elif args.action == "list":
        frame = (with_uris(labels.read_labels(args.db, args.label, table=args.table), args.db, args.table)
                 if args.label else labels.label_sets(args.db, table=args.table))
        print_json(records(frame)) if args.json else print_table(frame)
    else:
        out, format = export_target(args)
        result = export_labels(args.db, args.label, out, format=format, table=args.table)
        say_written(args, result, f"{result.rows} labelled tiles written to {result.path} ({result.format})")


def add_label_parser(sub) -> None:
    """The ``label`` sub-command and its actions."""
    label = sub.add_parser("label", help="label tiles positive/negative in named sets (for example search "
                                         "and detection)")
    actions = label.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = with_table(actions.add_parser("add", help="label tiles (upsert)"))
    add.add_argument("label", metavar="LABEL")
    add.add_argument("--positive", nargs="+", action="extend", metavar="ID", help="tile ids that are examples")
    add.add_argument("--negative", nargs="+", action="extend", metavar="ID", help="tile ids that are not")
    add.add_argument("--note", help="free text kept with the labels")
    rm = with_table(actions.add_parser("remove", help="remove tiles from a label set (or the whole set)"))
    rm.add_argument("label", metavar="LABEL")
    rm.add_argument("ids", nargs="*", metavar="ID")
    rm.add_argument("--all", action="store_true", help="remove every label of the set")
    ls = with_table(actions.add_parser("list", help="the label sets, or the labels of one set"))
    ls.add_argument("label", metavar="LABEL", nargs="?")
    ex = with_table(actions.add_parser("export", help="the labelled tiles as GeoJSON/GeoParquet/CSV"))
    ex.add_argument("label", metavar="LABEL")
    ex.add_argument("--out", required=True, help="file or s3:// object to write (-: stdout)")
    ex.add_argument("--format", choices=FORMATS, help="default: from the suffix of --out")
    label.set_defaults(run=cmd_label)
