"""Where to search: the filters every query mode shares, validated once, as SQL and as an exact row test.

A :class:`Filters` holds what a caller asked for (a bounding box, a great-circle radius, a polygon
(:mod:`rsclip.search.polygons`), an SQL ``where``; and when and how well a tile was seen: a ``date`` range
(:func:`rsclip.geo.dates.parse_range`, either end open), ``max_cloud`` (percent) and ``max_nodata`` (a
fraction). A tile whose time, cloud cover or nodata share is unknown never passes a filter on it, and on a
table written before rsclip recorded them (:meth:`Filters.on`) no tile does.
Each filter gives a *prefilter* (SQL on the table's columns, applied before the vector search so ``k`` rows
come back whenever ``k`` qualify) and, where SQL on the bound columns is only an approximation, an exact
test on the candidate rows (:meth:`Filters.keep`). Searchers (:mod:`rsclip.search.searchers`) take a
:class:`Filters` and never see raw user text: the box and the radius are numbers, ``where`` is the caller's
own SQL and is never built from values a web visitor typed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from rsclip.geo import dates
from rsclip.table import rows, tiles
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.search.near import Near, finite_numbers, near_filter, validate_near, within
from rsclip.search.polygons import Region, parse_polygon

BBox = tuple[float, float, float, float]
# The longest SQL filter accepted (a generated polygon or id list is far shorter).
MAX_WHERE_CHARS = 10_000
# SQL that no row passes (every tile has an id): a time filter on a table without that column.
NOTHING = f"({tiles.ID} IS NULL)"


def validate_bbox(bbox: Sequence[float]) -> BBox:
    """``bbox`` as ``(lon_min, lat_min, lon_max, lat_max)`` floats.

    Raises ``InvalidInput`` unless it has four finite numbers, longitudes in [-180, 180], latitudes in
    [-90, 90] and min <= max on both axes.
    """
    values = finite_numbers(bbox, 4, "bbox", "lon_min, lat_min, lon_max, lat_max")
    lon_min, lat_min, lon_max, lat_max = values
    for lon in (lon_min, lon_max):
        if not -180.0 <= lon <= 180.0:
            raise InvalidInput(f"bbox longitude {lon} is outside [-180, 180]")
    for lat in (lat_min, lat_max):
        if not -90.0 <= lat <= 90.0:
            raise InvalidInput(f"bbox latitude {lat} is outside [-90, 90]")
    if lon_min > lon_max or lat_min > lat_max:
        raise InvalidInput(f"bbox is inverted: min must not exceed max, got {values}")
    return values


def bbox_sql(bbox: BBox) -> str:
    """SQL keeping tiles whose WGS84 bounds intersect ``bbox`` (touching counts; null bounds never match)."""
    lon_min, lat_min, lon_max, lat_max = bbox
    return (
        f"({tiles.LON_MIN} <= {lon_max!r} AND {tiles.LON_MAX} >= {lon_min!r} "
        f"AND {tiles.LAT_MIN} <= {lat_max!r} AND {tiles.LAT_MAX} >= {lat_min!r})"
    )


def bbox_mask(bounds: dict[str, np.ndarray], bbox: BBox) -> np.ndarray:
    """Boolean mask of rows whose bounds (arrays by column, null as NaN) intersect ``bbox``, as :func:`bbox_sql`."""
    lon_min, lat_min, lon_max, lat_max = bbox
    with np.errstate(invalid="ignore"):
        return ((bounds[tiles.LON_MIN] <= lon_max) & (bounds[tiles.LON_MAX] >= lon_min)
                & (bounds[tiles.LAT_MIN] <= lat_max) & (bounds[tiles.LAT_MAX] >= lat_min))


def validate_where(where: str | None) -> str | None:
    """A caller's SQL filter, checked for shape (non-empty text of bounded length); None stays None."""
    if where is None:
        return None
    if not isinstance(where, str) or not where.strip():
        raise InvalidInput("where must be a non-empty SQL expression")
    if len(where) > MAX_WHERE_CHARS:
        raise LimitExceeded(f"where is {len(where)} characters long, more than {MAX_WHERE_CHARS}")
    return where


def region_sql(region: Region) -> str:
    """SQL keeping tiles whose bounds intersect one of ``region``'s boxes, or wrap across the antimeridian
    (``lon_min > lon_max``) within its latitudes: a superset that the footprint test then decides."""
    boxes = region.boxes()
    lat_min, lat_max = min(b[1] for b in boxes), max(b[3] for b in boxes)
    wrapped = (f"({tiles.LON_MIN} > {tiles.LON_MAX} AND {tiles.LAT_MIN} <= {lat_max!r} "
               f"AND {tiles.LAT_MAX} >= {lat_min!r})")
    return "(" + " OR ".join([*(bbox_sql(b) for b in boxes), wrapped]) + ")"


def validate_share(value, what: str, top: float) -> float | None:
    """``value`` as a float in [0, ``top``], or None. Raises ``InvalidInput`` naming ``what`` otherwise."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number in [0, {top:g}], got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not 0.0 <= number <= top:
        raise InvalidInput(f"{what} must be a number in [0, {top:g}], got {value!r}")
    return number


def join_sql(*parts: str | None) -> str | None:
    """The SQL conjunction of the non-empty ``parts`` (None when there is none)."""
    present = [p for p in parts if p]
    if len(present) <= 1:
        return present[0] if present else None
    return " AND ".join(f"({p})" for p in present)


@dataclass(frozen=True)
class Filters:
    """Validated filters of a search: ``bbox``, ``near`` = (lon, lat, radius_km), ``polygon`` (a
    :class:`~rsclip.search.polygons.Region`), ``where`` (SQL), ``date`` (a
    :class:`~rsclip.geo.dates.DateRange`), ``max_cloud`` (percent), ``max_nodata`` (fraction); ``absent``:
    the time columns the searched table lacks (:meth:`on`)."""

    bbox: BBox | None = None
    near: Near | None = None
    where: str | None = None
    polygon: Region | None = None
    date: dates.DateRange | None = None
    max_cloud: float | None = None
    max_nodata: float | None = None
    absent: frozenset = frozenset()

    @classmethod
    def of(cls, *, bbox=None, near=None, where=None, polygon=None, date=None, max_cloud=None,
           max_nodata=None) -> "Filters":
        """Validate raw arguments (as a user gives them) into :class:`Filters`; ``date`` is ``(start, end)``,
        ``"START/END"`` or one date (:func:`rsclip.geo.dates.parse_range`)."""
        return cls(bbox=validate_bbox(bbox) if bbox is not None else None,
                   near=validate_near(near) if near is not None else None,
                   where=validate_where(where),
                   polygon=parse_polygon(polygon) if polygon is not None else None,
                   date=dates.parse_range(date) if date is not None else None,
                   max_cloud=validate_share(max_cloud, "max_cloud (percent)", 100.0),
                   max_nodata=validate_share(max_nodata, "max_nodata (a fraction)", 1.0))

    @property
    def empty(self) -> bool:
        return (self.bbox is None and self.near is None and self.where is None and self.polygon is None
                and self.attribute_sql() is None)

    def on(self, table) -> "Filters":
        """These filters for ``table``: a time filter on a column the table lacks matches no tile (a table
        written before rsclip recorded time, not upgraded yet: its tiles' times are unknown)."""
        names = set(table.schema.names)
        return dataclasses.replace(self, absent=frozenset(c for c in tiles.TIME_COLUMNS if c not in names))

    def time_sql(self) -> str | None:
        """SQL of the date, cloud and nodata filters (nulls never pass)."""
        wanted = [(tiles.DATETIME, self.date.sql(tiles.DATETIME) if self.date is not None else None),
                  (tiles.CLOUD_COVER, None if self.max_cloud is None else f"{tiles.CLOUD_COVER} <= {self.max_cloud!r}"),
                  (tiles.NODATA_FRACTION,
                   None if self.max_nodata is None else f"{tiles.NODATA_FRACTION} <= {self.max_nodata!r}")]
        return join_sql(*(NOTHING if column in self.absent else sql for column, sql in wanted if sql))

    def attribute_sql(self) -> str | None:
        """SQL of the filters on a tile's own columns (time, quality, the caller's ``where``), not its place."""
        return join_sql(self.time_sql(), self.where)

    def spatial(self) -> "Filters":
        """These filters less those on a tile's attributes (:meth:`attribute_sql`): its place only."""
        return dataclasses.replace(self, where=None, date=None, max_cloud=None, max_nodata=None)

    def row_sql(self) -> str | None:
        """The SQL of the filters other than the box (which a resident table tests in memory)."""
        near = None
        if self.near is not None:
            near = near_filter(self.near) or f"({tiles.LON_MIN} IS NOT NULL)"
        return join_sql(near, region_sql(self.polygon) if self.polygon is not None else None, self.attribute_sql())

    def sql(self) -> str | None:
        """One SQL prefilter for all the filters (a superset where :meth:`keep` decides exactly)."""
        return join_sql(bbox_sql(self.bbox) if self.bbox is not None else None, self.row_sql())

    @property
    def exact_in_sql(self) -> bool:
        """True when :meth:`sql` alone decides (no row needs the exact test of :meth:`keep`)."""
        return self.near is None and self.polygon is None

    def keep(self, frame: pd.DataFrame, table=None) -> np.ndarray:
        """Boolean mask of the rows of ``frame`` (with bound columns) that pass the exact tests. A polygon
        tests the tiles' footprints (looked up by id in ``table``, the bound box where none is stored)."""
        mask = np.ones(len(frame), dtype=bool)
        if self.near is not None:
            mask &= within(self.near, frame)
        if self.polygon is not None and mask.any():
            mask[mask] = self.polygon.intersects(rows.tile_footprints(frame[mask], table))
        return mask
