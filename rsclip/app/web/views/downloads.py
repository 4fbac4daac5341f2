"""The download buttons of the web app: results, labels and detections as GeoJSON or GeoParquet.

A file is made (by :mod:`rsclip.app.web.data.download_files`, the writer of ``rsclip export``) only when its
button is pressed (Streamlit's deferred download), and only for at most
:data:`~rsclip.app.web.data.download_files.MAX_DOWNLOAD_ROWS` rows.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

from rsclip.app.web.data.download_files import FORMATS, MAX_DOWNLOAD_ROWS
from rsclip.app.web.keys import KEY_DOWNLOADS, view_key


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
