"""The options several ``rsclip`` commands share, and how they are read: the table (``DB``, ``--table``,
``--json``), numbers given as separate words or comma-separated, the search area (``--bbox``, ``--near``,
``--polygon``, ``--where``), example tiles (``--positive``/``--negative``) and the time filters.

``--polygon`` takes WKT, GeoJSON text, or the path of a ``.geojson``/``.json``/``.wkt`` file (WGS84). A date is
``2020``, ``2020-08``, ``2020-08-31`` or an ISO 8601 time; a range is ``START/END`` with ``..`` (or nothing) for
an open end. An end given as a day includes that day.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

from rsclip.errors import InvalidInput
from rsclip.runtime import storage
from rsclip.table import names

POLYGON_FILE_SUFFIXES = (".geojson", ".json", ".wkt")
# A command-line word that is a number or starts a list of them: a minus, then a digit (or a point and one).
NEGATIVE_NUMBERS = re.compile(r"^-\.?\d")


class Parser(argparse.ArgumentParser):
    """An argument parser that reads a word starting with a minus and a digit as a value, not an option:
    ``--near -99.15,47.02,2`` (a western longitude first) and ``--at -99.15,47.02``. argparse itself takes
    only a single negative number (``-99.15``) for a value. No rsclip option is named like a number, so
    nothing is lost; the sub-command parsers are of this class too (argparse makes them of their parent's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBERS


def add_db_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the table a command works on: ``DB`` and ``--table``."""
    parser.add_argument("db", metavar="DB", help="database: the folder (local path or s3:// URI) that holds the "
                                                 "tile table and the tables beside it")
    parser.add_argument("--table", default=names.DEFAULT_TABLE, help="tile table in DB (default: %(default)s)")
    return parser


def with_table(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the arguments of a command on one table: ``DB``, ``--table`` and ``--json``."""
    add_db_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    return parser


def numbers(values: Sequence[str], count: int, what: str) -> tuple[float, ...]:
    """``count`` floats from arguments given as separate words or comma-separated; ``InvalidInput`` naming
    ``what`` otherwise."""
    parts = [p for v in values for p in re.split(r"[,\s]+", v.strip()) if p]
    try:
        found = tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidInput(f"{what} must be {count} numbers, got {' '.join(values)!r}") from None
    if len(found) != count:
        raise InvalidInput(f"{what} must be {count} numbers, got {len(found)}: {' '.join(values)!r}")
    return found


def polygon_option(value: str | None) -> str | None:
    """The polygon text of ``--polygon``: the content of a named ``.geojson``/``.json``/``.wkt`` file (local
    or ``s3://``, at most ``MAX_POLYGON_CHARS`` bytes), else the value itself (WKT or GeoJSON text)."""
    if value is None:
        return None
    from rsclip.search.polygons import MAX_POLYGON_CHARS

    named = value.strip().lower().endswith(POLYGON_FILE_SUFFIXES) and not value.lstrip().startswith("{")
    if named and (storage.is_remote(value) or Path(value).is_file()):
        return storage.read_bytes(value, max_bytes=MAX_POLYGON_CHARS).decode("utf-8", errors="replace")
    if named:
        raise InvalidInput(f"--polygon file {value} not found")
    return value


def time_filters(args: argparse.Namespace) -> dict:
    """The time filters of a command's arguments (none when the command has no such options)."""
    return {"date": getattr(args, "date", None), "max_cloud": getattr(args, "max_cloud", None),
            "max_nodata": getattr(args, "max_nodata", None)}


def area(args: argparse.Namespace) -> dict:
    """The shared filters of a command's arguments: ``bbox``, ``near``, ``polygon``, ``where`` and the time
    filters (:func:`time_filters`)."""
    bbox = numbers(args.bbox, 4, "--bbox (lon_min lat_min lon_max lat_max)") if args.bbox else None
    near = numbers(args.near, 3, "--near (lon lat radius_km)") if args.near else None
    return {"bbox": bbox, "near": near, "polygon": polygon_option(args.polygon), "where": getattr(args, "where", None),
            **time_filters(args)}


def add_area_arguments(parser: argparse.ArgumentParser, *, where: bool = True) -> None:
    """``--bbox``, ``--near``, ``--polygon`` and (with ``where``) ``--where``: the filters :func:`area` reads."""
    parser.add_argument("--bbox", nargs="+", metavar="N", help="lon_min lat_min lon_max lat_max (WGS84)")
    parser.add_argument("--near", nargs="+", metavar="N", help="lon lat radius_km: tiles within the radius")
    add_polygon_argument(parser)
    if where:
        parser.add_argument("--where", help="extra SQL filter on the tile table's columns")


def add_polygon_argument(parser: argparse.ArgumentParser) -> None:
    """``--polygon`` on a search command."""
    parser.add_argument("--polygon", metavar="P", help="WGS84 polygon: WKT, GeoJSON, or a .geojson/.json/.wkt "
                                                       "file; keeps tiles whose footprint intersects it")


def add_example_arguments(parser: argparse.ArgumentParser) -> None:
    """``--positive`` and ``--negative`` (an example search) on a search command."""
    parser.add_argument("--positive", nargs="+", action="extend", metavar="ID",
                        help="example search: tile ids (or image paths, texts) to search like")
    parser.add_argument("--negative", nargs="+", action="extend", metavar="ID",
                        help="example search: tile ids (or image paths, texts) to search away from")


def add_time_arguments(parser: argparse.ArgumentParser) -> None:
    """``--date``, ``--max-cloud`` and ``--max-nodata`` on a search command."""
    parser.add_argument("--date", metavar="RANGE", help="tiles acquired in START/END, e.g. 2020-01-01/2021-06-30 "
                                                        "(.. or nothing for an open end; a day, month or year)")
    parser.add_argument("--max-cloud", type=float, metavar="PERCENT", help="tiles of items at most this cloudy")
    parser.add_argument("--max-nodata", type=float, metavar="FRACTION",
                        help="tiles with at most this share of nodata pixels (0..1)")
