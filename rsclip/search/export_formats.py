"""The formats :mod:`rsclip.search.export` writes, the file suffixes that name them, their media types, and how
an export's format is told (:func:`export_format`). Standard library only, so that the command line offers and
checks them without loading the libraries that write them."""

from __future__ import annotations

from pathlib import PurePosixPath

from rsclip.errors import InvalidInput

FORMATS = ("geojson", "geoparquet", "csv")
SUFFIXES = {".geojson": "geojson", ".json": "geojson", ".parquet": "geoparquet", ".geoparquet": "geoparquet",
            ".csv": "csv"}
MEDIA_TYPES = {"geojson": "application/geo+json", "geoparquet": "application/vnd.apache.parquet",
               "csv": "text/csv; charset=utf-8"}


def export_format(out: str, format: str | None = None, *, option: str = "format=") -> str:
    """The format of an export to ``out``: ``format`` when given, else from the suffix. Raises
    ``InvalidInput`` for an unknown format or suffix, naming the caller's ``option`` (``--format`` on the
    command line)."""
    if format is None:
        suffix = PurePosixPath(str(out)).suffix.lower()
        if suffix not in SUFFIXES:
            raise InvalidInput(f"cannot tell the format of {out!r} from its suffix: pass {option} one of "
                               f"{', '.join(FORMATS)}")
        return SUFFIXES[suffix]
    if format not in FORMATS:
        raise InvalidInput(f"{option.rstrip('=')} must be one of {', '.join(FORMATS)}, got {format!r}")
    return format
