"""The ``rsclip label`` command: label tiles positive or negative in named sets (for example search and
detection), list the sets and their labels, export a set's tiles.

    rsclip label add DB LABEL --positive ID... [--negative ID...] [--note TEXT]
    rsclip review DB solar -k 5 --json | rsclip label add DB solar --positive -     (ids piped in: - for stdin)
    rsclip label remove DB LABEL (ID... | --all)
    rsclip label list DB [LABEL]                    (the sets; or the labels of one set: tile id, uri, value, ...)
    rsclip label export DB LABEL --out labels.geojson [--format geojson|geoparquet|csv]
"""

from __future__ import annotations

import argparse
import json
import sys

from rsclip.app.api import client
from rsclip.app.cli.remote import add_api_option, ask, route
from rsclip.app.cli.exports import export_target, say_written, write_answer
from rsclip.app.cli.options import with_table
from rsclip.app.cli.output import print_json, print_table, records, say
from rsclip.errors import InvalidInput
from rsclip.search.export_formats import FORMATS


STDIN = "-"  # --positive - / --negative -: the ids piped in


def read_ids(text: str) -> list[str]:
    """Tile ids piped in: the JSON of ``rsclip query``/``review``/``suggest --json`` (records with an ``id``),
    a JSON list of ids, or text: the ``id`` column of a table the commands print, else the first word of each line."""
    stripped = text.strip()
    if not stripped:
        raise InvalidInput("no tile ids on stdin (--positive - / --negative - read them from there)")
    if stripped[0] not in "[{":
        lines = [line.split() for line in stripped.splitlines() if line.strip()]
        at = lines[0].index("id") if "id" in lines[0] else None
        return [words[at] for words in lines[1:] if len(words) > at] if at is not None else [w[0] for w in lines]
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"the ids on stdin are not valid JSON: {exc.msg} at character {exc.pos}") from None
    items = data if isinstance(data, list) else [data]
    ids = [item.get("id") if isinstance(item, dict) else item for item in items]
    if not all(isinstance(i, str) for i in ids):
        raise InvalidInput('the JSON on stdin must be records with an "id" or a list of tile ids')
    return ids


def piped_ids(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(positive, negative)`` ids of ``label add``, ``-`` replaced by the ids on stdin (one side only)."""
    positive, negative = list(args.positive or ()), list(args.negative or ())
    if STDIN in positive and STDIN in negative:
        raise InvalidInput("only one of --positive and --negative can read the ids on stdin (-)")
    if STDIN in positive + negative:
        piped = read_ids(sys.stdin.read())
        positive, negative = ([j for i in ids for j in (piped if i == STDIN else [i])] for ids in (positive, negative))
    return positive, negative


def cmd_label(args: argparse.Namespace) -> None:
    """``rsclip label ACTION``: add, remove, list or export labels (through a running service when given one:
    ``--api`` or ``$RSCLIP_API``)."""
    url = client.api_url(args.api)
    {"add": label_add, "remove": label_remove, "list": label_list, "export": label_export}[args.action](args, url)


def label_add(args: argparse.Namespace, url: str | None) -> None:
    if not args.positive and not args.negative:
        raise InvalidInput("give tile ids with --positive and/or --negative")
    positive, negative = piped_ids(args)
    if url is not None:
        body = {"positive": positive, "negative": negative, "note": args.note}
        n = ask(url, route("labels", args.label), args, body, "POST")["written"]
    else:
        from rsclip.table import labels

        n = labels.add_labels(args.db, args.label, positive, negative, table=args.table, note=args.note)
    say(args, {"label": args.label, "written": n}, f"{args.label}: {n} label(s) written")


def label_remove(args: argparse.Namespace, url: str | None) -> None:
    if bool(args.ids) == bool(args.all):
        raise InvalidInput("give the tile ids to remove, or --all to remove the whole label set")
    ids = None if args.all else args.ids
    if url is not None:
        n = ask(url, route("labels", args.label), args, {"ids": ids}, "DELETE")["removed"]
    else:
        from rsclip.table import labels

        n = labels.remove_labels(args.db, args.label, ids, table=args.table)
    say(args, {"label": args.label, "removed": n}, f"{args.label}: {n} label(s) removed")


def label_list(args: argparse.Namespace, url: str | None) -> None:
    """The label sets, or one set's labels with the uri of each tile."""
    if url is not None:
        rows = ask(url, route("labels", args.label), args)["labels"]
    else:
        from rsclip.table import labels

        rows = records(labels.labels_with_uris(args.db, args.label, table=args.table) if args.label
                       else labels.label_sets(args.db, table=args.table))
    print_json(rows) if args.json else print_table(rows)


def label_export(args: argparse.Namespace, url: str | None) -> None:
    if url is not None:
        written = write_answer(url, args, {"labels": args.label})
    else:
        from rsclip.search.export import export_labels

        out, format = export_target(args)
        written = vars(export_labels(args.db, args.label, out, format=format, table=args.table))
    say_written(args, written, f"{written['rows']} labelled tiles written to {written['path']} ({written['format']})")


def add_label_parser(sub) -> None:
    """The ``label`` sub-command and its actions."""
    label = sub.add_parser("label", help="label tiles positive/negative in named sets (for example search "
                                         "and detection)")
    actions = label.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = with_table(actions.add_parser("add", help="label tiles (upsert)"))
    add.add_argument("label", metavar="LABEL")
    add.add_argument("--positive", nargs="+", action="extend", metavar="ID",
                     help="tile ids that are examples (-: the ids piped in, e.g. from rsclip review --json)")
    add.add_argument("--negative", nargs="+", action="extend", metavar="ID",
                     help="tile ids that are not (-: the ids piped in)")
    add.add_argument("--note", help="free text kept with the labels")
    add_api_option(add)
    rm = with_table(actions.add_parser("remove", help="remove tiles from a label set (or the whole set)"))
    rm.add_argument("label", metavar="LABEL")
    rm.add_argument("ids", nargs="*", metavar="ID")
    rm.add_argument("--all", action="store_true", help="remove every label of the set")
    add_api_option(rm)
    ls = with_table(actions.add_parser("list", help="the label sets, or the labels of one set"))
    ls.add_argument("label", metavar="LABEL", nargs="?")
    add_api_option(ls)
    ex = with_table(actions.add_parser("export", help="the labelled tiles as GeoJSON/GeoParquet/CSV"))
    ex.add_argument("label", metavar="LABEL")
    ex.add_argument("--out", required=True, help="file or s3:// object to write (-: stdout)")
    ex.add_argument("--format", choices=FORMATS, help="default: from the suffix of --out")
    add_api_option(ex)
    label.set_defaults(run=cmd_label)
