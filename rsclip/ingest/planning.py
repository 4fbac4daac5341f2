"""Planning (a Ray Data stage): files into tile rows.

A scene (a raster with a CRS: GeoTIFF/COG, JPEG 2000) is cut into the tile grid whatever its size (one
smaller than a tile is one window of all of it), so its tiles are the places a search returns and a timeline
follows; a chip (JPEG, PNG, a raster without CRS) no larger than ``max_chip`` pixels a side is one tile (the
whole image), a larger one is cut into the grid too. Tables cut before scenes were always tiled keep cutting
scenes up to ``max_chip`` whole (``whole_scenes``; :mod:`rsclip.table.anchors`). Tile ids are
``tiles.tile_id`` of the window, so a rerun plans the same ids; every row carries the file's version tag
and its number of rows, so the writer knows when a file is complete. Small chips carry their encoded bytes
forward (read many at a time: :func:`prefetch`). A file that cannot be planned becomes one error row; faults
of the whole store (confirmed by a probe, :func:`~rsclip.ingest.listing.store_down`) raise.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rsclip import errors
from rsclip.geo import dates, footprints, raster
from rsclip.runtime import reads, storage
from rsclip.table import tiles
from rsclip.geo.images import image_size
from rsclip.geo.windows import Window, grid_windows
from rsclip.errors import InvalidInput
from rsclip.ingest import listing
from rsclip.ingest.batch import (CHIP, FILE_TILES, MESSAGE, PLAN_COLUMNS, RASTER, SIZE, STAGE_PLAN, VERSION,
                                 error_row, failure_text, rows_to_batch, tile_row)

# Chips up to this size are fetched whole during planning and carried to the decode step.
SMALL_FILE_BYTES = 512 * 1024
HEADER_BYTES = 64 * 1024
# A chip larger than this is not fetched: it is not a chip (big scenes belong in a raster format).
MAX_CHIP_BYTES = 256 * 1024 * 1024


def fetch(uri: str, size: int, end: int | None = None) -> bytes:
    """The first ``end`` bytes of ``uri`` (all of them when None) whose listed size is ``size``: one GET.

    Raises ``LimitExceeded`` for a whole chip above :data:`MAX_CHIP_BYTES`.
    """
    if end is None and size > MAX_CHIP_BYTES:
        raise errors.LimitExceeded(f"{uri}: {size} bytes is more than a chip may have ({MAX_CHIP_BYTES})")
    fs, path = storage.filesystem(uri)
    return fs.cat_file(path, start=0 if end is not None else None, end=end)


def plan_chip(uri: str, size: int, options: raster.RasterOptions, version: str = "",
              data: bytes | None = None) -> list[dict[str, Any]]:
    """Tile rows of a JPEG/PNG/... image: one whole-image tile, or a grid when larger than ``max_chip``;
    ``data``: its bytes when already read (:func:`prefetch`), else one GET here.

    Raises ``InvalidInput`` for empty, unreadable, too small and oversized (bomb) images.
    """
    if size == 0:
        raise InvalidInput(f"{uri}: empty file")
    small = size <= SMALL_FILE_BYTES
    if data is None:
        data = fetch(uri, size) if small else fetch(uri, size, HEADER_BYTES)
    try:
        width, height = image_size(data, uri)
    except errors.LimitExceeded:
        raise
    except InvalidInput:
        if small:
            raise
        data = fetch(uri, size)
        width, height = image_size(data, uri)
    carried = data if small else b""
    if max(width, height) <= options.max_chip:
        windows = [Window(0, 0, width, height)]
    else:
        windows = grid_windows(width, height, options.tile_size, options.overlap)
    return [tile_row(uri, version, w, CHIP, data=carried) for w in windows]


def plan_raster(uri: str, options: raster.RasterOptions, version: str = "",
                whole_scenes: bool = False) -> list[dict[str, Any]]:
    """Tile rows of a raster opened with its own driver (windows: ``raster.plan_scene``), with WGS84 bounds.

    Raises ``InvalidInput`` for unreadable or disguised rasters, unsupported data types and all-nodata scenes.
    """
    with raster.open_raster(uri) as src:
        try:
            scene, windows = raster.plan_scene(src, options, whole_scenes)
        except InvalidInput as exc:
            raise InvalidInput(f"{uri}: {exc}") from None
        text = json.dumps(scene.to_dict())
        tagged = dates.from_tags({**src.tags(), **src.tags(ns="IMAGERY")})
        return [{**tile_row(uri, version, w, RASTER, bounds=raster.window_bounds_wgs84(src, w), crs=scene.crs,
                            scene=text), tiles.FOOTPRINT: footprints.raster_footprint_wkb(src, w) or b"",
                 tiles.DATETIME: dates.NULL_MICROS if tagged is None else tagged}
                for w in windows]


def stamp(rows: list[dict[str, Any]], uri: str, source: listing.ArchiveFile, pattern) -> None:
    """Set the time columns of ``rows`` of ``source``: its datetime is the STAC item's, else a date in its
    name (``pattern``, :func:`rsclip.geo.dates.name_pattern`), else what its raster's tags record (set
    while planning), else unknown; item id and cloud cover come from the item."""
    when = source.datetime if source.datetime is not None else dates.from_name(uri, pattern)
    for row in rows:
        if when is not None:
            row[tiles.DATETIME] = when
        row[tiles.ITEM_ID] = source.item_id
        row[tiles.CLOUD_COVER] = np.nan if source.cloud_cover is None else float(source.cloud_cover)


def plan_file(uri: str, size: int, options: raster.RasterOptions, version: str = "",
              source: listing.ArchiveFile | None = None, pattern=None, whole_scenes: bool = False,
              data: bytes | None = None) -> list[dict[str, Any]]:
    """Tile rows for one file (``source``: what the listing said of it), each counting the file's rows
    (``file_tiles``) and stamped with its time (:func:`stamp`), or one error row when it cannot be planned;
    ``whole_scenes``: the table's rule (module doc); ``data``: a small chip's bytes when already read
    (:func:`prefetch`). Raises :class:`~rsclip.errors.StoreUnavailable` for faults of the whole store."""
    source = source or listing.ArchiveFile(uri, size, version)
    try:
        if source.problem:
            raise InvalidInput(source.problem)
        if raster.is_raster(uri):
            if size == 0:
                raise InvalidInput(f"{uri}: empty file")
            rows = plan_raster(uri, options, version, whole_scenes)
        else:
            rows = plan_chip(uri, size, options, version, data)
    except Exception as exc:
        down = listing.store_down(exc, uri)
        if down is not None:
            raise down from None
        return [error_row(uri, STAGE_PLAN, failure_text(exc, uri), version=version)]
    stamp(rows, uri, source, pattern)
    for row in rows:
        row[FILE_TILES] = len(rows)
    return rows


def listed_sources(batch: dict[str, np.ndarray]) -> list[listing.ArchiveFile]:
    """The :class:`~rsclip.ingest.listing.ArchiveFile` of each row of a batch of listed files (keys uri,
    size and, when present, version, the time columns and ``message``: the source's problem)."""
    n = len(batch[tiles.URI])
    column = lambda key, default: batch[key] if key in batch else [default] * n  # noqa: E731
    sources = []
    for uri, size, version, when, item, cloud, problem in zip(
            batch[tiles.URI], batch[SIZE], column(VERSION, ""), column(tiles.DATETIME, dates.NULL_MICROS),
            column(tiles.ITEM_ID, ""), column(tiles.CLOUD_COVER, np.nan), column(MESSAGE, "")):
        sources.append(listing.ArchiveFile(
            str(uri), int(size), str(version), None if int(when) == dates.NULL_MICROS else int(when), str(item),
            None if not np.isfinite(float(cloud)) else float(cloud), str(problem)))
    return sources


def plan_files(batch: dict[str, np.ndarray], options: dict, datetime_pattern: str | None = None,
               whole_scenes: bool = False) -> dict[str, np.ndarray]:
    """Ray Data stage: file rows (:func:`listed_sources`) to tile rows (:data:`PLAN_COLUMNS`).

    ``options`` is ``asdict(RasterOptions)`` (plain data crosses into workers; rebuilt typed here);
    ``datetime_pattern``: the job's ``--datetime-from-name``; ``whole_scenes``: the table's rule (module doc).
    """
    opts = raster.RasterOptions.from_dict(options)
    pattern = dates.name_pattern(datetime_pattern)
    rows: list[dict[str, Any]] = []
    sources = listed_sources(batch)
    carried = prefetch(sources)
    for source in sources:
        rows.extend(plan_file(source.uri, source.size, opts, source.version, source, pattern, whole_scenes,
                              carried.get(source.uri)))
    return rows_to_batch(rows, PLAN_COLUMNS)


def prefetch(sources: list[listing.ArchiveFile]) -> dict[str, bytes]:
    """The bytes of the small chips among ``sources`` (at most :data:`SMALL_FILE_BYTES` each), read many at a
    time (:func:`rsclip.runtime.reads.read_many`). One that fails, or grew past the bound since it was
    listed, is left out: :func:`plan_chip` reads it again and reports what is wrong as for any file."""
    wanted = [s.uri for s in sources
              if not s.problem and 0 < s.size <= SMALL_FILE_BYTES and not raster.is_raster(s.uri)]
    got = reads.read_many(wanted, max_bytes=SMALL_FILE_BYTES)
    return {uri: data for uri, data in zip(wanted, got) if isinstance(data, bytes)}
