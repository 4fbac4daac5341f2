"""What every view of the web app page needs to know, gathered once per run by the sidebar."""

from __future__ import annotations

from dataclasses import dataclass, field

from rsclip.app.server import WebConfig
from rsclip.app.web.data.timedata import TableTimes, TimeFilter
from rsclip.search.filters import BBox
from rsclip.search.polygons import Region


@dataclass
class PageContext:
    """The served table (``config``, its ``summary`` from :func:`rsclip.app.web.caches.table_summary`), the
    visitor's choices (``k``, the search area as ``bbox`` and/or a drawn ``area``, the time and quality limits
    ``when``) and the current label set (``label``, None before one is chosen; ``labelled``: its tile ids ->
    +1/-1)."""

    config: WebConfig
    conn: object
    summary: dict
    k: int
    bbox: BBox | None = None
    area: Region | None = None
    label: str | None = None
    labelled: dict[str, int] = field(default_factory=dict)
    when: TimeFilter = field(default_factory=TimeFilter)

    @property
    def extent(self):
        """The table's WGS84 extent, or None when no tile has bounds (the page then shows no map)."""
        return self.summary.get("extent")

    @property
    def times(self) -> TableTimes:
        """What the table records of time (:class:`~rsclip.app.web.data.timedata.TableTimes`)."""
        return self.summary.get("times") or TableTimes()

    def filters(self, *, dated: bool = True) -> dict:
        """The filters every search of the page passes on: the area (``bbox``, ``polygon``), the quality
        limits (``max_cloud``, ``max_nodata``) and, unless ``dated`` is False (a comparison of two dates
        chooses its own), the date range (``date``)."""
        chosen = {"bbox": self.bbox, "polygon": self.area, **self.when.quality()}
        return {**chosen, "date": self.when.date} if dated else chosen
