"""Downloads of the web app: results, labels and detections as GeoJSON or GeoParquet.

The files are made by the export code (:mod:`rsclip.search.export`: ``features`` + ``encode`` for rows the
page already holds, ``export_labels`` for a label set), the same writer as ``rsclip export``: a downloaded
file is what the CLI would write. A file is made only when its button is pressed (Streamlit's deferred
download), and only for at most :data:`MAX_DOWNLOAD_ROWS` rows.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from rsclip.app.keys import KEY_DOWNLOADS, view_key
from rsclip.table import tiles
from rsclip.search import export

MAX_DOWNLOAD_ROWS = 10_000
# Button text -> (export format, file suffix, MIME type).
FORMATS = {"GeoJSON": ("geojson", ".geojson", "application/geo+json"),
           "GeoParquet": ("geoparquet", ".parquet", "application/vnd.apache.parquet")}
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


def download_buttons(view: str, what: str, stem: str, rows: int, make: Callable[[str], bytes]) -> None:
    """One download button per format for ``rows`` rows of ``what`` (keys ``downloads-<view>-<format>``);
    ``make(format)`` returns the file's bytes when pressed. Over :data:`MAX_DOWNLOAD_ROWS` rows, a note."""
    if rows > MAX_DOWNLOAD_ROWS:
        st.caption(f"{rows:,} {what}: more than the download limit of {MAX_DOWNLOAD_ROWS:,} (narrow the area or "
                   "raise the threshold)")
        return
    columns = st.columns(len(FORMATS) + 2)
    columns[0].caption(f"Download {rows:,} {what}:")
    for column, (name, (fmt, suffix, mime)) in zip(columns[1:], FORMATS.items()):
        column.download_button(name, data=lambda fmt=fmt: make(fmt), file_name=f"{stem}{suffix}", mime=mime,
                               key=view_key(KEY_DOWNLOADS, view, what, fmt), on_click="ignore")
