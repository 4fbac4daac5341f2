"""What every view of the web app page needs to know, gathered once per run by the sidebar."""

from __future__ import annotations

from dataclasses import dataclass, field

from rsclip.app.server import WebConfig
from rsclip.search.filters import BBox
from rsclip.search.polygons import Region


@dataclass
class PageContext:
    """The served table (``config``, its ``summary`` from :func:`rsclip.app.caches.table_summary`), the
    visitor's choices (``k``, the search area as ``bbox`` and/or a drawn ``area``) and the current label set
    (``label``, None before one is chosen; ``labelled``: its tile ids -> +1/-1)."""

    config: WebConfig
    conn: object
    summary: dict
    k: int
    bbox: BBox | None = None
    area: Region | None = None
    label: str | None = None
    labelled: dict[str, int] = field(default_factory=dict)

    @property
    def extent(self):
        """The table's WGS84 extent, or None when no tile has bounds (the page then shows no map)."""
        return self.summary.get("extent")

    def filters(self) -> dict:
        """The area filters every search of the page passes on (``bbox``, ``polygon``). The date range of
        issue 17 joins them here (``date``), from the sidebar's ``KEY_DATE`` place."""
        return {"bbox": self.bbox, "polygon": self.area}
