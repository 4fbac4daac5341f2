"""The ``rsclip`` commands about time: the tiles of one place over time, and the places that changed most
between two dates.

    rsclip timeline DB (TILE_ID | --at LON LAT) [--reference DATE_OR_ID] [--date RANGE]
    rsclip changes DB DATE_A DATE_B [--bbox ...] [--polygon P] [-k 20] [--min-overlap 0.5]

Dates and ranges are written as for ``rsclip query --date`` (:mod:`rsclip.app.cli.options`).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import pandas as pd

from rsclip.app.cli.options import add_area_arguments, add_time_arguments, area, numbers, time_filters, with_table
from rsclip.app.cli.output import print_json, print_table, records
from rsclip.errors import InvalidInput
from rsclip.search.timeline import changes, timeline

TIMELINE_SHOWN = ("datetime", "uri", "similarity", "cloud_cover", "nodata_fraction", "x", "y", "width", "height")
CHANGES_SHOWN = ("change", "datetime", "datetime_b", "overlap", "uri", "x", "y", "width", "height")


def _show(args: argparse.Namespace, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """``frame`` as JSON records (without vectors and footprints) with ``--json``, else its ``columns``."""
    if args.json:
        print_json(records(frame.drop(columns=[c for c in ("vector", "footprint") if c in frame.columns])))
        return
    print_table(frame[[c for c in columns if c in frame.columns]])


def cmd_timeline(args: argparse.Namespace) -> None:
    """``rsclip timeline``: the tiles of a place by date, with their similarity to a reference."""
    if (args.tile is None) == (args.at is None):
        raise InvalidInput("give the place: a tile id, or --at LON LAT (one of them)")
    place = args.tile if args.tile is not None else numbers(args.at, 2, "--at (lon lat)")
    frame = timeline(args.db, place, table=args.table, reference=args.reference, **time_filters(args))
    _show(args, frame, ("id",) + TIMELINE_SHOWN if args.ids else TIMELINE_SHOWN)


def cmd_changes(args: argparse.Namespace) -> None:
    """``rsclip changes``: places ranked by how much their embedding moved between two dates."""
    place = area(args)  # the area and the quality filters; the dates are the command's own
    place.pop("where"), place.pop("date")
    frame = changes(args.db, args.date_a, args.date_b, table=args.table, k=args.k or None,
                    min_overlap=args.min_overlap, **place)
    _show(args, frame, ("id", "id_b") + CHANGES_SHOWN if args.ids else CHANGES_SHOWN)


def add_timeline_parser(sub) -> None:
    """The ``timeline`` sub-command."""
    tl = with_table(sub.add_parser("timeline", help="the tiles of one place over time, with their similarity "
                                                    "to the first (or a chosen) date"))
    tl.add_argument("tile", nargs="?", metavar="TILE_ID", help="a tile: the place is its centre")
    tl.add_argument("--at", nargs="+", metavar="N", help="lon lat of the place (WGS84)")
    tl.add_argument("--reference", metavar="DATE_OR_ID", help="compare with this tile, or the tile nearest this date")
    tl.add_argument("--ids", action="store_true", help="show tile ids")
    add_time_arguments(tl)
    tl.set_defaults(run=cmd_timeline)


def add_changes_parser(sub) -> None:
    """The ``changes`` sub-command."""
    ch = with_table(sub.add_parser("changes", help="places ranked by how much their embedding moved between two "
                                                   "dates"))
    ch.add_argument("date_a", metavar="DATE_A", help="a day, month, year or START/END range")
    ch.add_argument("date_b", metavar="DATE_B", help="the later date or range")
    add_area_arguments(ch, where=False)
    ch.add_argument("-k", type=int, default=20, help="places shown (0 = all; default: %(default)s)")
    ch.add_argument("--min-overlap", type=float, default=0.5,
                    help="least intersection over union of two tiles taken as one place (default: %(default)s)")
    ch.add_argument("--max-cloud", type=float, metavar="PERCENT", help="tiles of items at most this cloudy")
    ch.add_argument("--max-nodata", type=float, metavar="FRACTION", help="tiles with at most this nodata share")
    ch.add_argument("--ids", action="store_true", help="show tile ids")
    ch.set_defaults(run=cmd_changes)
