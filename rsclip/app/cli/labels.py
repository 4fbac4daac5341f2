"""The ``rsclip`` sub-commands of the examples -> labels -> detections -> GIS workflow, and the options they
share with ``rsclip query``:

    rsclip label add DB LABEL --positive ID... [--negative ID...] [--note TEXT]
    rsclip label remove DB LABEL (ID... | --all)
    rsclip label list DB [LABEL]
    rsclip label export DB LABEL --out labels.geojson [--format geojson|geoparquet|csv]
    rsclip export DB (--query TEXT | --image PATH | --positive ID... [--negative ID...] |
                      --detections LABEL [--min-score S]) [--bbox ...] [--near ...] [--polygon P] [--where SQL]
                     [-k N] [--dissolve] --out PATH_or_s3:// [--format geojson|geoparquet|csv]

``--polygon`` takes WKT, GeoJSON text, or the path of a ``.geojson``/``.json``/``.wkt`` file (WGS84).
"""

from __future__ import annotations

from pathlib import Path

from rsclip.runtime import storage
from rsclip.errors import InvalidInput

POLYGON_FILE_SUFFIXES = (".geojson", ".json", ".wkt")


def polygon_option(value: str | None) -> str | None:
    """The polygon text of ``--polygon``: the content of a named ``.geojson``/``.json``/``.wkt`` file (local
    or ``s3://``, at most ``MAX_POLYGON_CHARS`` bytes), else the value itself (WKT or GeoJSON text)."""
    from rsclip.search.polygons import MAX_POLYGON_CHARS

    if value is None:
        return None
    named = value.strip().lower().endswith(POLYGON_FILE_SUFFIXES) and not value.lstrip().startswith("{")
    if named and (storage.is_remote(value) or Path(value).is_file()):
        return storage.read_bytes(value, max_bytes=MAX_POLYGON_CHARS).decode("utf-8", errors="replace")
    if named:
        raise InvalidInput(f"--polygon file {value} not found")
    return value


def area(args) -> dict:
    """The shared filters of a command's arguments: ``bbox``, ``near``, ``polygon``, ``where`` and the time
    filters (:func:`rsclip.app.commands_time.time_filters`)."""
    from rsclip.app.cli import _numbers
    from rsclip.app.commands_time import time_filters

    bbox = _numbers(args.bbox, 4, "--bbox (lon_min lat_min lon_max lat_max)") if args.bbox else None
    near = _numbers(args.near, 3, "--near (lon lat radius_km)") if args.near else None
    return {"bbox": bbox, "near": near, "polygon": polygon_option(args.polygon), "where": getattr(args, "where", None),
            **time_filters(args)}


def add_polygon_argument(parser) -> None:
    parser.add_argument("--polygon", metavar="P", help="WGS84 polygon: WKT, GeoJSON, or a .geojson/.json/.wkt "
                                                       "file; keeps tiles whose footprint intersects it")


def add_example_arguments(parser) -> None:
    parser.add_argument("--positive", nargs="+", action="extend", metavar="ID",
                        help="example search: tile ids (or image paths, texts) to search like")
    parser.add_argument("--negative", nargs="+", action="extend", metavar="ID",
                        help="example search: tile ids (or image paths, texts) to search away from")


def cmd_label(args) -> None:
    from rsclip.app.cli import _print_json, _print_table, _records
    from rsclip.table import labels

    if args.action == "add":
        if not args.positive and not args.negative:
            raise InvalidInput("give tile ids with --positive and/or --negative")
        n = labels.add_labels(args.db, args.label, args.positive or (), args.negative or (), table=args.table,
                              note=args.note)
        _say(args, {"label": args.label, "written": n}, f"{args.label}: {n} label(s) written")
    elif args.action == "remove":
        if bool(args.ids) == bool(args.all):
            raise InvalidInput("give the tile ids to remove, or --all to remove the whole label set")
        n = labels.remove_labels(args.db, args.label, None if args.all else args.ids, table=args.table)
        _say(args, {"label": args.label, "removed": n}, f"{args.label}: {n} label(s) removed")
    elif args.action == "list":
        frame = (labels.read_labels(args.db, args.label, table=args.table) if args.label
                 else labels.label_sets(args.db, table=args.table))
        _print_json(_records(frame)) if args.json else _print_table(frame)
    else:
        from rsclip.search.export import export_labels

        result = export_labels(args.db, args.label, args.out, format=args.format, table=args.table)
        _say(args, vars(result), f"{result.rows} labelled tiles written to {result.path} ({result.format})")


def _say(args, record: dict, text: str) -> None:
    from rsclip.app.cli import _print_json

    _print_json(record) if args.json else print(text)


def cmd_export(args) -> None:
    from rsclip.app.cli import _quiet_model_loading
    from rsclip.search.export import export
    from rsclip.search.query import Text

    sources = [args.query is not None, args.image is not None, bool(args.positive or args.negative),
               args.detections is not None]
    if sum(sources) != 1:
        raise InvalidInput("give one of --query TEXT, --image PATH, --positive ID..., --detections LABEL")
    if args.query is not None or args.image is not None or args.positive or args.negative:
        _quiet_model_loading()
    query = Text(args.query) if args.query is not None else None
    if args.image is not None:
        query = args.image if storage.is_remote(args.image) else Path(args.image)
    result = export(args.db, args.out, format=args.format, dissolved=args.dissolve, table=args.table,
                    query=query, positive=args.positive, negative=args.negative, detections=args.detections,
                    min_score=args.min_score, k=args.k, **area(args))
    _say(args, vars(result), f"{result.rows} feature(s) written to {result.path} ({result.format})")


def add_label_parser(sub, with_table) -> None:
    """The ``label`` sub-command and its actions."""
    from rsclip.search.export import FORMATS

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
    ex.add_argument("--out", required=True, help="file or s3:// object to write")
    ex.add_argument("--format", choices=FORMATS, help="default: from the suffix of --out")
    label.set_defaults(run=cmd_label)


def add_export_parser(sub, with_table) -> None:
    """The ``export`` sub-command."""
    from rsclip.search.export import FORMATS

    ex = with_table(sub.add_parser("export", help="results or detections as GeoJSON/GeoParquet/CSV footprints"))
    ex.add_argument("--query", help="text query to export the results of")
    ex.add_argument("--image", help="image path or s3:// URI to export the results of")
    add_example_arguments(ex)
    ex.add_argument("--detections", metavar="LABEL", help="export the detections of a label set")
    ex.add_argument("--min-score", type=float, help="detections scoring at least this (0..1)")
    ex.add_argument("-k", type=int, default=100, help="results of a query or example search (default: %(default)s)")
    ex.add_argument("--bbox", nargs="+", metavar="N", help="lon_min lat_min lon_max lat_max (WGS84)")
    ex.add_argument("--near", nargs="+", metavar="N", help="lon lat radius_km: tiles within the radius")
    add_polygon_argument(ex)
    ex.add_argument("--where", help="extra SQL filter on the tile table's columns")
    ex.add_argument("--format", choices=FORMATS, help="default: from the suffix of --out")
    ex.add_argument("--out", required=True, help="file or s3:// object to write")
    ex.add_argument("--dissolve", action="store_true",
                    help="merge touching footprints (max/mean score and tile count per polygon)")
    ex.set_defaults(run=cmd_export)


def register(sub, with_table) -> None:
    """Add ``label`` and ``export`` to the ``rsclip`` sub-commands (``with_table`` adds DB, --table, --json),
    and the example and polygon options to ``query``."""
    query = sub.choices["query"]
    add_example_arguments(query)
    add_polygon_argument(query)
    add_label_parser(sub, with_table)
    add_export_parser(sub, with_table)


__all__ = ["add_example_arguments", "add_polygon_argument", "area", "polygon_option", "register"]
