"""Dates and date ranges: when a tile was seen, parsed once from whatever a user, a catalog or a file says.

Times are UTC instants, carried as microseconds since the epoch (:data:`NULL_MICROS` for "unknown") through
the embedding job and stored as ``timestamp[us, UTC]`` (:data:`rsclip.table.tiles.DATETIME`). Text without an
offset is read as UTC.

- :func:`parse_instant`: ISO 8601 / RFC 3339 text (``2020-08-31``, ``2020-08-31T17:05:00Z``,
  ``2020-08-31 17:05:00+02:00``, ``20200831``, ``20200831T170500``), TIFF's ``2020:08:31 17:05:00``, a
  ``datetime``/``date``/``pandas.Timestamp``.
- :func:`parse_range`: a :class:`DateRange` from ``"START/END"`` (``..`` or nothing for an open end, as STAC
  writes it), a ``(start, end)`` pair (None for an open end) or one value. An end given as a day (or a month,
  a year) includes that whole day (month, year): ``2020-01-01/2021-06-30`` keeps June 30th.
- :func:`from_tags` and :func:`from_name`: the acquisition time a GeoTIFF records, or a file name holds.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from rsclip.errors import InvalidInput, LimitExceeded

NULL_MICROS = int(np.iinfo(np.int64).min)  # "no time known" in int64 columns (numpy's NaT)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
OPEN_ENDS = ("", "..")
MAX_TEXT_CHARS = 100
# A date like 2020, 2020-08, 2020-08-31 or 20200831: an end given this way includes the whole period.
_PARTIAL = re.compile(r"^(\d{4})(?:-?(\d{2})(?:-?(\d{2}))?)?$")
_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})[T_ ]?(\d{2})(\d{2})(\d{2})?Z?$")
_TIFF = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")
# Where a GeoTIFF records when it was acquired, most specific first: GDAL's IMAGERY domain, common
# acquisition keys, then the TIFF tag (which some writers set to the processing time instead).
ACQUISITION_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED",
                    "TIFFTAG_DATETIME")
NAME_GROUP = "datetime"  # the named group of --datetime-from-name that holds the date
MAX_PATTERN_CHARS = 1000


def to_micros(instant: dt.datetime) -> int:
    """``instant`` (aware, or naive read as UTC) as microseconds since the epoch."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.timezone.utc)
    return (instant - EPOCH) // dt.timedelta(microseconds=1)


def from_micros(micros: int) -> dt.datetime | None:
    """The UTC datetime of ``micros`` since the epoch; None for :data:`NULL_MICROS`."""
    if micros == NULL_MICROS:
        return None
    return EPOCH + dt.timedelta(microseconds=int(micros))


def _partial(text: str) -> tuple[dt.datetime, dt.datetime] | None:
    """``(start, next)`` of a year, month or day given as text (``2020``, ``2020-08``, ``2020-08-31``)."""
    found = _PARTIAL.match(text)
    if not found:
        return None
    year, month, day = (int(g) if g else None for g in found.groups())
    try:
        start = dt.datetime(year, month or 1, day or 1, tzinfo=dt.timezone.utc)
    except ValueError:
        raise InvalidInput(f"not a date: {text!r}") from None
    if day is not None:
        return start, start + dt.timedelta(days=1)
    if month is not None:
        return start, dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return start, dt.datetime(year + 1, 1, 1, tzinfo=dt.timezone.utc)


def _period(value) -> tuple[dt.datetime, dt.datetime | None]:
    """``(instant, end of its period)``: the end is set when ``value`` names a whole day, month or year."""
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)), None
    if isinstance(value, dt.date):
        start = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
        return start, start + dt.timedelta(days=1)
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return _period(value.to_pydatetime())
    if not isinstance(value, str):
        raise InvalidInput(f"not a date or time: {value!r} ({type(value).__name__})")
    text = value.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise LimitExceeded(f"a date of {len(text)} characters is longer than {MAX_TEXT_CHARS}")
    whole = _partial(text)
    if whole is not None:
        return whole
    for pattern in (_COMPACT, _TIFF):
        found = pattern.match(text)
        if found:
            parts = [int(g) if g else 0 for g in found.groups()]
            try:
                return dt.datetime(*parts, tzinfo=dt.timezone.utc), None
            except ValueError:
                raise InvalidInput(f"not a date or time: {text!r}") from None
    try:
        return _period(dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        raise InvalidInput(f"not a date or time: {text!r} (expected ISO 8601, e.g. 2020-08-31 or "
                           "2020-08-31T17:05:00Z)") from None


def parse_instant(value) -> dt.datetime:
    """The UTC instant ``value`` names (a day names its first instant). Raises ``InvalidInput`` otherwise."""
    return _period(value)[0].astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class DateRange:
    """Instants from ``start`` (inclusive) to ``stop`` (exclusive), microseconds since the epoch; None: open."""

    start: int | None = None
    stop: int | None = None

    def sql(self, column: str) -> str | None:
        """SQL keeping rows whose ``column`` (a UTC timestamp) lies in the range; nulls never match."""
        parts = [f"{column} {op} timestamp '{_sql_time(v)}'"
                 for op, v in ((">=", self.start), ("<", self.stop)) if v is not None]
        return " AND ".join(parts) if parts else f"{column} IS NOT NULL"

    def contains(self, micros) -> np.ndarray:
        """Boolean mask of the instants (int64 microseconds, :data:`NULL_MICROS` for unknown) in the range."""
        values = np.asarray(micros, dtype=np.int64)
        mask = values != NULL_MICROS
        if self.start is not None:
            mask &= values >= self.start
        if self.stop is not None:
            mask &= values < self.stop
        return mask

    def interval(self) -> str:
        """The range as an RFC 3339 interval for a STAC API (``..`` for an open end; the end inclusive)."""
        start = _iso(self.start) if self.start is not None else ".."
        end = _iso(self.stop - 1) if self.stop is not None else ".."
        return f"{start}/{end}"

    def __str__(self) -> str:
        return self.interval()


def _iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sql_time(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%d %H:%M:%S.%f")


def _bound(value, end: bool) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() in OPEN_ENDS):
        return None
    instant, period_end = _period(value)
    if end:
        return to_micros(period_end) if period_end is not None else to_micros(instant) + 1
    return to_micros(instant)


def parse_range(value) -> DateRange:
    """A :class:`DateRange` from ``"START/END"``, ``(start, end)``, a :class:`DateRange` or one date (its
    whole day, month or year; one instant for a time). Raises ``InvalidInput`` for text that is not a date,
    a range with both ends open, and a start after the end."""
    if isinstance(value, DateRange):
        return value
    if isinstance(value, str) and "/" in value:
        parts = value.split("/")
        if len(parts) != 2:
            raise InvalidInput(f"a date range is START/END, got {value!r}")
        first, last = parts
    elif isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidInput(f"a date range is (start, end), got {len(value)} values")
        first, last = value
    else:
        first = last = value
    try:
        span = DateRange(_bound(first, end=False), _bound(last, end=True))
    except InvalidInput as exc:
        raise InvalidInput(f"malformed date range {value!r}: {exc}") from None
    if span.start is None and span.stop is None:
        raise InvalidInput(f"date range {value!r} is open at both ends: give a start, an end or both")
    if span.start is not None and span.stop is not None and span.start >= span.stop:
        raise InvalidInput(f"date range {value!r} ends before it starts")
    return span


def from_tags(tags: Mapping[str, str]) -> int | None:
    """The acquisition time a raster's metadata records (:data:`ACQUISITION_TAGS`, first readable one), in
    microseconds; None when it records none. A date without a time is its first instant."""
    for key in ACQUISITION_TAGS:
        text = tags.get(key)
        if not text:
            continue
        try:
            return to_micros(parse_instant(str(text)))
        except InvalidInput:
            continue  # a writer's free text: try the next key
    return None


def name_pattern(pattern: str | None) -> re.Pattern | None:
    """``pattern`` compiled, checked to hold the date in a named group (``(?P<datetime>...)``, or its only
    named group). Raises ``InvalidInput`` for a pattern that does not compile or names no group."""
    if pattern is None:
        return None
    if len(pattern) > MAX_PATTERN_CHARS:
        raise LimitExceeded(f"a datetime pattern of {len(pattern)} characters is longer than {MAX_PATTERN_CHARS}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise InvalidInput(f"--datetime-from-name {pattern!r} is not a regular expression: {exc}") from None
    if NAME_GROUP not in compiled.groupindex and len(compiled.groupindex) != 1:
        raise InvalidInput(f"--datetime-from-name {pattern!r} needs a named group holding the date, e.g. "
                           r"'_(?P<datetime>\d{8})\.tif$'")
    return compiled


def from_name(name: str, pattern: re.Pattern | None) -> int | None:
    """The time that ``pattern`` (:func:`name_pattern`) finds in ``name``, in microseconds; None when it
    does not match or the text it holds is not a date."""
    if pattern is None:
        return None
    found = pattern.search(name)
    if not found:
        return None
    group = NAME_GROUP if NAME_GROUP in pattern.groupindex else next(iter(pattern.groupindex))
    try:
        return to_micros(parse_instant(found.group(group) or ""))
    except InvalidInput:
        return None
