"""The batches that flow through the embedding pipeline: their keys, row states and helpers, written once.

A batch is a dict of equal-length numpy columns (Ray Data's ``numpy`` batch format). Planning produces
:data:`PLAN_COLUMNS`, reading :data:`READ_COLUMNS`, the embedder adds ``vector``; the tile columns reuse
the table's names (:mod:`rsclip.table.tiles`). Every row carries a :data:`STATUS`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rsclip.runtime import faults
from rsclip.geo import dates
from rsclip.table import tiles

# Batch keys added by the reader (tile columns reuse the table's names).
SIZE = "size"  # file size in bytes
VERSION = "version"  # the object's version tag (ETag, or size and mtime), written with its tiles
FILE_TILES = "file_tiles"  # rows planned for the row's file (1 for a file that failed planning)
KIND = "kind"  # CHIP (Pillow) or RASTER (rasterio)
SCENE = "scene"  # JSON of raster.SceneInfo for RASTER rows
DATA = "data"  # encoded bytes of a small chip, else b""
STATUS = "status"
STAGE = "stage"
MESSAGE = "message"
# Set by mark_present for a file the table holds tiles of from another version, or without a version: 1 on
# each of its rows (the writer tracks the file and tidies up once it is complete); on its first row, the ids
# stored from other versions (JSON list) and how many are stored without one.
TRACKED = "tracked"
STORED_OTHER = "stored_other"
STORED_UNVERSIONED = "stored_unversioned"
PIXELS = "pixels"  # resized uint8 HWC arrays (a tensor column in Ray Data; (0, 0, 3) where not read)
PIXELS_HEIGHT = "pixels_height"
PIXELS_WIDTH = "pixels_width"
# Set by the embedder on the first row of each batch it ran the model on: EMBED_BATCH_OK when some tile of the
# batch embedded, EMBED_BATCH_FAILED when every one failed (--max-failed-batches counts these); 0 elsewhere.
EMBED_BATCH = "embed_batch"
EMBED_BATCH_OK, EMBED_BATCH_FAILED = 1, -1

CHIP, RASTER = "chip", "raster"
# Row states through the pipeline. ADOPTED: in the table without a version (written before versions were
# recorded), kept as it is; the writer records the version listed now.
TODO, PRESENT, NODATA, ERROR, READY, EMBEDDED = "todo", "present", "nodata", "error", "ready", "embedded"
ADOPTED = "adopted"
# Stages named in the errors table.
STAGE_PLAN, STAGE_READ, STAGE_EMBED = "plan", "read", "embed"
MAX_MESSAGE_CHARS = 2000

# When and how well each tile was seen (the table's columns): the datetime as int64 microseconds since the
# epoch (dates.NULL_MICROS: unknown), item id "" and NaN fractions for null.
TIME_COLUMNS = tiles.TIME_COLUMNS
PLAN_COLUMNS = (tiles.ID, tiles.URI, VERSION, FILE_TILES, *tiles.WINDOW_COLUMNS, *tiles.BOUNDS_COLUMNS, tiles.CRS,
                tiles.FOOTPRINT, *TIME_COLUMNS, KIND, SCENE, DATA, STATUS, STAGE, MESSAGE, TRACKED, STORED_OTHER,
                STORED_UNVERSIONED)
READ_COLUMNS = tuple(c for c in PLAN_COLUMNS if c not in (DATA, SCENE)) + (PIXELS, PIXELS_HEIGHT, PIXELS_WIDTH)
_FLOAT_COLUMNS = {*tiles.BOUNDS_COLUMNS, tiles.CLOUD_COVER, tiles.NODATA_FRACTION}
_INT_COLUMNS = {*tiles.WINDOW_COLUMNS, FILE_TILES, TRACKED, STORED_UNVERSIONED, PIXELS_HEIGHT, PIXELS_WIDTH,
                tiles.DATETIME}


def empty_row(uri: str, version: str = "") -> dict[str, Any]:
    """A plan row for ``uri`` with every column at its neutral value."""
    return {
        tiles.ID: "", tiles.URI: uri, VERSION: version, FILE_TILES: 1,
        tiles.X: 0, tiles.Y: 0, tiles.WIDTH: 0, tiles.HEIGHT: 0,
        **{c: np.nan for c in tiles.BOUNDS_COLUMNS}, tiles.CRS: "", tiles.FOOTPRINT: b"",
        tiles.DATETIME: dates.NULL_MICROS, tiles.ITEM_ID: "", tiles.CLOUD_COVER: np.nan, tiles.NODATA_FRACTION: np.nan,
        KIND: CHIP, SCENE: "", DATA: b"",
        STATUS: TODO, STAGE: "", MESSAGE: "", TRACKED: 0, STORED_OTHER: "", STORED_UNVERSIONED: 0,
    }


def error_row(uri: str, stage: str, message: str, window: Sequence[int] = (0, 0, 0, 0),
              version: str = "") -> dict[str, Any]:
    """A plan row recording that ``uri`` (or one window of it) failed at ``stage``."""
    row = empty_row(uri, version)
    row.update(dict(zip(tiles.WINDOW_COLUMNS, window)))
    row.update({STATUS: ERROR, STAGE: stage, MESSAGE: message[:MAX_MESSAGE_CHARS]})
    return row


def tile_row(uri: str, version: str, window: Sequence[int], kind: str, *, bounds=None, crs=None, scene: str = "",
             data: bytes = b"") -> dict[str, Any]:
    """A plan row for one tile of ``uri`` (its id from uri and window)."""
    row = empty_row(uri, version)
    row.update({tiles.ID: tiles.tile_id(uri, *window), **dict(zip(tiles.WINDOW_COLUMNS, window)),
                KIND: kind, SCENE: scene, DATA: data, tiles.CRS: crs or ""})
    if bounds is not None:
        row.update(dict(zip(tiles.BOUNDS_COLUMNS, bounds)))
    return row


def failure_text(exc: BaseException, uri: str) -> str:
    """The message recorded for a file or tile that failed, ``"<uri>: ..."``: our own errors as they are,
    others with their type; a fault of this one object (access denied) says so first. (A store-wide fault
    that the store's probe did not confirm is not named: it came from the object's name or content.)"""
    fault = faults.store_fault(exc, ignore=(uri,))
    text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    if text.startswith(f"{uri}: "):
        text = text[len(uri) + 2:]
    if fault is not None and not fault.store_wide and fault.advice not in text.lower():
        text = f"{fault.advice}: {text}"
    return f"{uri}: {text}"


def rows_to_batch(rows: list[dict[str, Any]], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Row dicts as a column batch with the given ``columns`` (object arrays for text and bytes)."""
    batch: dict[str, np.ndarray] = {}
    for c in columns:
        values = [r[c] for r in rows]
        if c in _FLOAT_COLUMNS:
            batch[c] = np.asarray(values, dtype=np.float64)
        elif c in _INT_COLUMNS:
            batch[c] = np.asarray(values, dtype=np.int64)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            batch[c] = arr
    return batch


def batch_images(batch: dict[str, np.ndarray], rows) -> list[np.ndarray]:
    """The ``(h, w, 3)`` uint8 images of ``rows`` of a read batch."""
    return [np.asarray(batch[PIXELS][i], dtype=np.uint8) for i in rows]
