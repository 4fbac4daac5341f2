"""When tiles were seen, as data for the web app: what a table records of time, the visitor's date range and
quality limits (checked), and dates as text.

No Streamlit here (:mod:`rsclip.app.web.views.date_filter`, :mod:`rsclip.app.web.views.timeline` and
:mod:`rsclip.app.web.views.changes` draw). A date a visitor types is parsed strictly: an ISO 8601 calendar date
``YYYY-MM-DD`` (or reduced to ``YYYY-MM`` or ``YYYY``), at most :data:`MAX_DATE_CHARS` characters, then
checked by :func:`rsclip.geo.dates.parse_range`; a start names the first instant of its day (month, year) and
an end includes its whole day (month, year), as ``rsclip query --date START/END`` does. Nothing typed reaches
SQL: a range becomes two integers (:class:`~rsclip.geo.dates.DateRange`) that
:class:`~rsclip.search.filters.Filters` writes into its SQL.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

import pandas as pd
import pyarrow.compute as pc

from rsclip.geo import dates
from rsclip.table import datasets, tiles
from rsclip.errors import InvalidInput, LimitExceeded

MAX_DATE_CHARS = 10
DAY_PATTERN = re.compile(r"\d{4}(?:-\d{2}(?:-\d{2})?)?")
DATE_HINT = "YYYY-MM-DD (or YYYY-MM, YYYY)"
# The other date of a row of rsclip.changes (its B side).
DATETIME_B = f"{tiles.DATETIME}_b"


@dataclass(frozen=True)
class TableTimes:
    """What a tile table records of time: the time columns it has (``columns``), how many tiles have a known
    date (``dated``), the first and last of them (UTC), and how many tiles have a known cloud cover
    (``clouded``) and nodata share (``measured``)."""

    columns: frozenset = frozenset()
    dated: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    clouded: int = 0
    measured: int = 0

    @property
    def has_dates(self) -> bool:
        return self.dated > 0


def table_times(table) -> TableTimes:
    """The :class:`TableTimes` of ``table`` (a scan of its time columns, batch by batch: bounded memory)."""
    names = set(table.schema.names)
    present = frozenset(c for c in tiles.TIME_COLUMNS if c in names)
    dataset = datasets.dataset_of(table)
    count = lambda column: dataset.count_rows(filter=f"{column} IS NOT NULL") if column in present else 0  # noqa: E731
    lows, highs = [], []
    if tiles.DATETIME in present:
        for batch in dataset.to_batches(columns=[tiles.DATETIME], filter=f"{tiles.DATETIME} IS NOT NULL"):
            if batch.num_rows:
                lows.append(pc.min(batch.column(0)).as_py())
                highs.append(pc.max(batch.column(0)).as_py())
    first, last = (min(lows), max(highs)) if lows else (None, None)
    return TableTimes(columns=present, dated=count(tiles.DATETIME), first=first, last=last,
                      clouded=count(tiles.CLOUD_COVER), measured=count(tiles.NODATA_FRACTION))


def checked_day(text: str | None, what: str) -> str | None:
    """A date typed as ``text`` (see the module), stripped; None when blank. Raises ``LimitExceeded`` over
    :data:`MAX_DATE_CHARS` characters, ``InvalidInput`` naming ``what`` for anything but a real ISO date."""
    text = (text or "").strip()
    if not text:
        return None
    if len(text) > MAX_DATE_CHARS:
        raise LimitExceeded(f"{what} is {len(text)} characters long: a date is {DATE_HINT}")
    if not DAY_PATTERN.fullmatch(text):
        raise InvalidInput(f"{what} {text!r} is not a date: type {DATE_HINT}")
    try:
        dates.parse_range(text)
    except InvalidInput:
        raise InvalidInput(f"{what} {text!r} is not a date of the calendar") from None
    return text


def period(text: str | None, what: str) -> dates.DateRange | None:
    """The whole day, month or year a visitor typed (:func:`checked_day`) as a range; None when blank."""
    day = checked_day(text, what)
    return dates.parse_range(day) if day is not None else None


def date_range(start: str | None, end: str | None) -> dates.DateRange | None:
    """The range from the day ``start`` to the day ``end`` (both included; either blank: open); None when
    both are blank. Raises ``InvalidInput`` (one line) for a bad date or a start after the end."""
    first, last = checked_day(start, "the start date"), checked_day(end, "the end date")
    if first is None and last is None:
        return None
    span = dates.DateRange(dates.parse_range(first).start if first else None,
                           dates.parse_range(last).stop if last else None)
    if span.start is not None and span.stop is not None and span.start >= span.stop:
        raise InvalidInput(f"the start date {first} is after the end date {last}")
    return span


@dataclass(frozen=True)
class TimeFilter:
    """The visitor's time and quality limits: ``start`` and ``end`` as typed (checked), their ``date`` range,
    ``max_cloud`` (percent) and ``max_nodata`` (a fraction); None: no limit."""

    start: str | None = None
    end: str | None = None
    date: dates.DateRange | None = None
    max_cloud: float | None = None
    max_nodata: float | None = None

    def quality(self) -> dict:
        """The cloud and nodata limits as search arguments."""
        return {"max_cloud": self.max_cloud, "max_nodata": self.max_nodata}

    def describe(self) -> str | None:
        """The limits in words (one line), None without any."""
        parts = []
        if self.date is not None:
            parts.append(f"dated {self.start} to {self.end}" if self.start and self.end
                         else f"dated from {self.start}" if self.start else f"dated up to {self.end}")
        if self.max_cloud is not None:
            parts.append(f"cloud cover at most {self.max_cloud:g} %")
        if self.max_nodata is not None:
            parts.append(f"nodata at most {100 * self.max_nodata:g} %")
        return " · ".join(parts) or None

    def cli(self) -> str | None:
        """The limits as ``rsclip query`` flags, None without any."""
        flags = []
        if self.date is not None:
            flags.append(f"--date {self.start or '..'}/{self.end or '..'}")
        if self.max_cloud is not None:
            flags.append(f"--max-cloud {self.max_cloud:g}")
        if self.max_nodata is not None:
            flags.append(f"--max-nodata {self.max_nodata:g}")
        return " ".join(flags) or None


def time_filter(start: str | None, end: str | None, cloud_percent: float | None = None,
                nodata_percent: float | None = None) -> TimeFilter:
    """A :class:`TimeFilter` from what the sidebar holds: two typed dates and two limits in percent (None,
    or 100: no limit). Raises ``InvalidInput`` (one line) for bad dates."""
    def limit(value):
        return None if value is None or float(value) >= 100.0 else float(value)

    span = date_range(start, end)
    nodata = limit(nodata_percent)
    return TimeFilter(start=(start or "").strip() or None, end=(end or "").strip() or None, date=span,
                      max_cloud=limit(cloud_percent), max_nodata=None if nodata is None else nodata / 100.0)


def describe_time(value) -> str:
    """A tile's time as text: ``YYYY-MM-DD`` (UTC) at midnight, else ``YYYY-MM-DD HH:MM UTC``; ``date
    unknown`` for None or NaT."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "date unknown"
    when = pd.Timestamp(value)
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    if (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0):
        return when.strftime("%Y-%m-%d")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def describe_span(times: TableTimes) -> str:
    """The table's dated tiles in words: how many, first to last."""
    return f"{times.dated:,} dated tile(s), {describe_time(times.first)} to {describe_time(times.last)}"


def _known(row, column: str) -> float | None:
    """``row[column]`` as a finite float, None when the row lacks it or it is unknown."""
    value = row.get(column)
    if value is None or isinstance(value, str) or pd.isna(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def seen_text(row) -> str | None:
    """When and how well a result row's tile was seen, as one line (``date · cloud · nodata``; a row of
    ``rsclip.changes`` names both dates); None when the row knows none of it."""
    parts = []
    if tiles.DATETIME in row:
        parts.append(describe_time(row[tiles.DATETIME]))
        if DATETIME_B in row:
            parts[-1] += f" \u2192 {describe_time(row[DATETIME_B])}"
    cloud, nodata = _known(row, tiles.CLOUD_COVER), _known(row, tiles.NODATA_FRACTION)
    if cloud is not None:
        parts.append(f"cloud {cloud:g} %")
    if nodata is not None:
        parts.append(f"nodata {100 * nodata:.0f} %")
    return " · ".join(parts) or None
