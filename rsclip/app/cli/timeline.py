"""The ``rsclip`` sub-commands about time, and the time filters every search command takes:

    rsclip query DB "farmland" --date 2020-01-01/2021-06-30 [--max-cloud 10] [--max-nodata 0.2]
    rsclip timeline DB (TILE_ID | --at LON LAT) [--reference DATE_OR_ID] [--date RANGE]
    rsclip changes DB DATE_A DATE_B [--bbox ...] [--polygon P] [-k 20] [--min-overlap 0.5]
    rsclip upgrade DB          # add the columns newer rsclip records (all null) to an older table, in place

A date is ``2020``, ``2020-08``, ``2020-08-31`` or an ISO 8601 time; a range is ``START/END`` with ``..`` (or
nothing) for an open end. An end given as a day includes that day.
"""

from __future__ import annotations

from rsclip.table import tiles
from rsclip.errors import InvalidInput

TIMELINE_SHOWN = ("datetime", "uri", "similarity", "cloud_cover", "nodata_fraction", "x", "y", "width", "height")
CHANGES_SHOWN = ("change", "datetime", "datetime_b", "overlap", "uri", "x", "y", "width", "height")


def add_time_arguments(parser) -> None:
    """``--date``, ``--max-cloud`` and ``--max-nodata`` on a search command."""
    parser.add_argument("--date", metavar="RANGE", help="tiles acquired in START/END, e.g. 2020-01-01/2021-06-30 "
                                                        "(.. or nothing for an open end; a day, month or year)")
    parser.add_argument("--max-cloud", type=float, metavar="PERCENT", help="tiles of items at most this cloudy")
    parser.add_argument("--max-nodata", type=float, metavar="FRACTION",
                        help="tiles with at most this share of nodata pixels (0..1)")


def time_filters(args) -> dict:
    """The time filters of a command's arguments (none when the command has no such options)."""
    return {"date": getattr(args, "date", None), "max_cloud": getattr(args, "max_cloud", None),
            "max_nodata": getattr(args, "max_nodata", None)}


def _show(args, frame, columns) -> None:
    from rsclip.app.cli import _print_json, _print_table, _records

    if args.json:
        _print_json(_records(frame.drop(columns=[c for c in ("vector", "footprint") if c in frame.columns])))
        return
    _print_table(frame[[c for c in columns if c in frame.columns]])


def cmd_timeline(args) -> None:
    from rsclip.app.cli import _numbers
    from rsclip.search.timeline import timeline

    if (args.tile is None) == (args.at is None):
        raise InvalidInput("give the place: a tile id, or --at LON LAT (one of them)")
    place = args.tile if args.tile is not None else _numbers(args.at, 2, "--at (lon lat)")
    frame = timeline(args.db, place, table=args.table, reference=args.reference, **time_filters(args))
    _show(args, frame, ("id",) + TIMELINE_SHOWN if args.ids else TIMELINE_SHOWN)


def cmd_changes(args) -> None:
    from rsclip.app.commands_geo import area
    from rsclip.search.timeline import changes

    place = area(args)  # the area and the quality filters; the dates are the command's own
    place.pop("where"), place.pop("date")
    frame = changes(args.db, args.date_a, args.date_b, table=args.table, k=args.k or None,
                    min_overlap=args.min_overlap, **place)
    _show(args, frame, ("id", "id_b") + CHANGES_SHOWN if args.ids else CHANGES_SHOWN)


def cmd_upgrade(args) -> None:
    from rsclip.app.cli import _print_json

    table = tiles.open_table(args.db, args.table)
    before = set(table.schema.names)
    tiles.upgrade_table(table)
    added = [c for c in table.schema.names if c not in before]
    if args.json:
        _print_json({"table": args.table, "added": added, "rows": table.count_rows()})
        return
    print(f"{args.table}: " + (f"added {', '.join(added)} (null); {table.count_rows()} rows kept" if added
                               else "up to date"))


def register(sub, with_table) -> None:
    """Add ``timeline``, ``changes`` and ``upgrade``, and the time filters to ``query`` and ``export``."""
    from rsclip.app.commands_geo import add_polygon_argument

    for name in ("query", "export"):
        add_time_arguments(sub.choices[name])
    tl = with_table(sub.add_parser("timeline", help="the tiles of one place over time, with their similarity "
                                                    "to the first (or a chosen) date"))
    tl.add_argument("tile", nargs="?", metavar="TILE_ID", help="a tile: the place is its centre")
    tl.add_argument("--at", nargs="+", metavar="N", help="lon lat of the place (WGS84)")
    tl.add_argument("--reference", metavar="DATE_OR_ID", help="compare with this tile, or the tile nearest this date")
    tl.add_argument("--ids", action="store_true", help="show tile ids")
    add_time_arguments(tl)
    tl.set_defaults(run=cmd_timeline)
    ch = with_table(sub.add_parser("changes", help="places ranked by how much their embedding moved between two "
                                                   "dates"))
    ch.add_argument("date_a", metavar="DATE_A", help="a day, month, year or START/END range")
    ch.add_argument("date_b", metavar="DATE_B", help="the later date or range")
    ch.add_argument("--bbox", nargs="+", metavar="N", help="lon_min lat_min lon_max lat_max (WGS84)")
    ch.add_argument("--near", nargs="+", metavar="N", help="lon lat radius_km")
    add_polygon_argument(ch)
    ch.add_argument("-k", type=int, default=20, help="places shown (0 = all; default: %(default)s)")
    ch.add_argument("--min-overlap", type=float, default=0.5,
                    help="least intersection over union of two tiles taken as one place (default: %(default)s)")
    ch.add_argument("--max-cloud", type=float, metavar="PERCENT", help="tiles of items at most this cloudy")
    ch.add_argument("--max-nodata", type=float, metavar="FRACTION", help="tiles with at most this nodata share")
    ch.add_argument("--ids", action="store_true", help="show tile ids")
    ch.set_defaults(run=cmd_changes)
    up = with_table(sub.add_parser("upgrade", help="add the columns newer rsclip records to an older table "
                                                   "(null; nothing is embedded again)"))
    up.set_defaults(run=cmd_upgrade)
