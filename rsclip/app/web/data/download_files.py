"""The files the web app's downloads hold: results, labels and detections as GeoJSON or GeoParquet bytes.

The files are made by the export code (:mod:`rsclip.search.export`: ``features`` + ``encode`` for rows the
page already holds, ``export_labels`` for a label set), the same writer as ``rsclip export``: a downloaded
file is what the CLI would write. The buttons are :mod:`rsclip.app.web.views.downloads`; at most
:data:`MAX_DOWNLOAD_ROWS` rows are offered.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd

from rsclip.table import tiles
from rsclip.search import export
from rsclip.search.export_formats import MEDIA_TYPES

MAX_DOWNLOAD_ROWS = 10_000
# Button text -> (export format, file suffix, MIME type).
FORMATS = {"GeoJSON": ("geojson", ".geojson", MEDIA_TYPES["geojson"]),
           "GeoParquet": ("geoparquet", ".parquet", MEDIA_TYPES["geoparquet"])}
SUFFIXES = {fmt: suffix for fmt, suffix, _ in FORMATS.values()}


def rows_file(db: str, table: str, frame: pd.DataFrame, format: str) -> bytes:
    """The bytes of the export of ``frame`` (result or detection rows of ``table``) in ``format``."""
    return export.encode(export.features(frame, tiles.open_table(db, table)), format)


def labels_file(db: str, table: str, label: str, format: str) -> bytes:
    """The bytes of :func:`rsclip.search.export.export_labels` of ``label`` in ``format``."""
    with tempfile.TemporaryDirectory(prefix="rsclip-labels-") as folder:
        path = Path(folder) / f"labels{SUFFIXES[format]}"
        export.export_labels(db, label, str(path), format=format, table=table)
        return path.read_bytes()


def file_stem(*parts: str) -> str:
    """A safe file name stem from ``parts`` (table, view, label set names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-.")[:100] or "rsclip"
