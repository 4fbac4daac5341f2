"""Reading (Ray Data stages): skip tiles already in the table, decode the rest to small uint8 arrays.

:func:`read_tiles` decodes each planned tile (Pillow for chips, window reads through
:mod:`rsclip.geo.raster` for rasters) and resizes it to the model's shortest-side size, so only ~150 KB of
uint8 per tile crosses the object store; a JPEG chip that is one tile and at least twice the model's input
is decoded at reduced scale (libjpeg's DCT scaling) instead of in full. A tile that cannot be read becomes
``status = error`` (stage and message kept) and the job goes on; faults of the whole store (confirmed by a
probe) raise.
"""

from __future__ import annotations

import functools
import json
from contextlib import ExitStack
from typing import Iterator

import numpy as np

from rsclip import errors
from rsclip.geo import raster
from rsclip.runtime import storage
from rsclip.table import source_versions, tiles
from rsclip.geo.images import decode_image
from rsclip.model.preprocess import ImagePreprocess, resize_shortest_side
from rsclip.geo.windows import Window
from rsclip.ingest.batch import (ADOPTED, DATA, ERROR, FILE_TILES, KIND, MESSAGE, NODATA, PIXELS, PIXELS_HEIGHT,
                                 PIXELS_WIDTH, PRESENT, RASTER, READ_COLUMNS, READY, SCENE, STAGE, STAGE_READ, STATUS,
                                 STORED_OTHER, STORED_UNVERSIONED, TODO, TRACKED, VERSION, failure_text)
from rsclip.ingest.listing import store_down
from rsclip.ingest.planning import MAX_CHIP_BYTES


NO_PIXELS = np.zeros((0, 0, 3), dtype=np.uint8)  # the pixels of a row that was not read


@functools.lru_cache(maxsize=4)
def _table_at(db: str, table: str, version: int):
    tbl = tiles.open_table(db, table)
    tbl.checkout(version)
    return tbl


def mark_present(batch: dict[str, np.ndarray], db: str, table: str, version: int) -> dict[str, np.ndarray]:
    """Ray Data stage: ``todo`` rows whose tile is in the table (as of ``version``, the table when the job
    started) with the version of the object listed now become ``present``, those stored without a version
    (before versions were recorded) ``adopted``; their encoded bytes are dropped. A tile stored with another
    version stays ``todo``: the object was rewritten, the tile is embedded again and replaces the old row.
    The rows of a file the table holds tiles of from another version, or without one, are marked
    :data:`~rsclip.ingest.batch.TRACKED`, its first row naming those tiles (the writer tidies up after it)."""
    out = dict(batch)
    status = np.asarray(batch[STATUS]).astype(object)
    if len(status) and version > 0:
        uris = np.asarray(batch[tiles.URI]).astype(str)
        listed = dict(zip(uris, np.asarray(batch[VERSION]).astype(str)))
        stored = source_versions.stored_of(_table_at(db, table, version), listed)
        _mark_stored(out, status, stored)
        _mark_tracked(out, uris, listed, stored)
    out[STATUS] = status
    data = np.asarray(batch[DATA]).astype(object)
    data[(status == PRESENT) | (status == ADOPTED)] = b""
    out[DATA] = data
    return out


def _mark_stored(batch: dict[str, np.ndarray], status: np.ndarray, stored: list) -> None:
    """``todo`` rows whose tile is stored with the version listed now become ``present``; without one,
    ``adopted``."""
    versions = {tile: version for tile, _, version in stored}
    for i in np.flatnonzero(status == TODO):
        tile = str(batch[tiles.ID][i])
        if tile not in versions:
            continue
        if versions[tile] is None:
            status[i] = ADOPTED
        elif versions[tile] == str(batch[VERSION][i]):
            status[i] = PRESENT


def _mark_tracked(batch: dict[str, np.ndarray], uris: np.ndarray, listed: dict[str, str], stored: list) -> None:
    """Mark the rows of files stored in another version or without one (see :func:`mark_present`)."""
    other: dict[str, list[str]] = {}
    unversioned: dict[str, int] = {}
    for tile, uri, version in stored:
        if version is None:
            unversioned[uri] = unversioned.get(uri, 0) + 1
        elif version != listed[uri]:
            other.setdefault(uri, []).append(tile)
    if not other and not unversioned:
        return
    tracked = np.isin(uris, list({*other, *unversioned})).astype(np.int64)
    first_other = np.asarray(batch[STORED_OTHER]).astype(object)
    first_unversioned = np.asarray(batch[STORED_UNVERSIONED]).astype(np.int64)
    for uri in {*other, *unversioned}:
        first = int(np.argmax(uris == uri))
        first_other[first] = json.dumps(other.get(uri, []))
        first_unversioned[first] = unversioned.get(uri, 0)
    batch[TRACKED], batch[STORED_OTHER], batch[STORED_UNVERSIONED] = tracked, first_other, first_unversioned


class _Sources:
    """The image (chip) or open raster that the current rows come from: tiles of one file arrive together,
    so one decoded chip and one open raster are kept at a time."""

    def __init__(self):
        self._chip: tuple[tuple[str, int | None], np.ndarray] | None = None
        self._raster: tuple[str, object, ExitStack] | None = None

    def chip(self, uri: str, data: bytes, reduce_to: int | None = None) -> np.ndarray:
        if self._chip is None or self._chip[0] != (uri, reduce_to):
            self._chip = None  # a large chip is not carried from planning: read it here
            encoded = data or storage.read_bytes(uri, max_bytes=MAX_CHIP_BYTES)
            self._chip = ((uri, reduce_to), decode_image(encoded, uri, reduce_to=reduce_to))
        return self._chip[1]

    def raster(self, uri: str):
        if self._raster is None or self._raster[0] != uri:
            self.close_raster()
            scope = ExitStack()
            self._raster = (uri, scope.enter_context(raster.open_raster(uri)), scope)
        return self._raster[1]

    def close_raster(self) -> None:
        if self._raster is not None:
            self._raster[2].close()
            self._raster = None


def _read_one(sources: _Sources, batch: dict[str, np.ndarray], i: int,
              reduce_to: int) -> tuple[np.ndarray | None, float]:
    """The pixels of row ``i`` at full window size (None when a raster window is all nodata) and the share
    of them that is nodata (none in a chip); a chip that is one whole-image tile may come decoded at a
    reduced scale keeping its shortest side >= ``reduce_to`` (:func:`~rsclip.geo.images.decode_image`)."""
    uri = str(batch[tiles.URI][i])
    window = Window(*(int(batch[c][i]) for c in tiles.WINDOW_COLUMNS))
    if batch[KIND][i] == RASTER:
        scene = raster.SceneInfo.from_dict(json.loads(str(batch[SCENE][i])))
        return raster.read_tile(sources.raster(uri), window, scene)
    if int(batch[FILE_TILES][i]) == 1 and window.x == window.y == 0:
        whole = sources.chip(uri, batch[DATA][i], reduce_to)
        if any(whole.shape[:2] == (-(-window.height // s), -(-window.width // s)) for s in (1, 2, 4, 8)):
            return whole, 0.0  # the whole image, at full or reduced scale; else decoded in full below
    whole = sources.chip(uri, batch[DATA][i])
    image = window.crop(whole)
    if image.shape[:2] != (window.height, window.width):
        raise errors.InvalidInput(f"{uri}: decoded size {whole.shape[1]}x{whole.shape[0]} does not hold window "
                                  f"{tuple(window)}")
    return image, 0.0


def read_slices(batch: dict[str, np.ndarray], preprocess: dict, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage: :func:`read_tiles` on ``batch`` ``rows`` at a time, each slice's output yielded before
    the next is decoded (Ray Data gathers them into blocks of ~128 MiB), so a task never holds the decoded tiles
    of all its files, however many windows they cut into.

    The stage takes whole blocks (no ``batch_size`` of its own): Ray Data fuses it with planning and bundles a
    fused task's input files up to the largest batch size among the fused stages, so a batch size here, counted
    in tiles, would become a count of files per task and put a small archive, or a few scenes, in one task."""
    for start in range(0, len(batch[tiles.URI]), rows):
        yield read_tiles({c: v[start : start + rows] for c, v in batch.items()}, preprocess)


def read_tiles(batch: dict[str, np.ndarray], preprocess: dict) -> dict[str, np.ndarray]:
    """Ray Data stage: decode rows with status ``todo`` and resize them for the model (status ``ready``);
    all-nodata windows become ``nodata``, unreadable ones ``error``. Output columns: :data:`READ_COLUMNS`.

    ``preprocess`` is ``asdict(ImagePreprocess)`` of the model.
    """
    prep = ImagePreprocess.from_dict(preprocess)
    n = len(batch[tiles.URI])
    pixels = np.empty(n, dtype=object)  # HWC uint8 arrays: Ray Data keeps them as a tensor column (no copies
    for i in range(n):                   # through Python bytes, ~12x cheaper per block than binary)
        pixels[i] = NO_PIXELS
    heights, widths = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    nodata = np.asarray(batch[tiles.NODATA_FRACTION], dtype=np.float64).copy()
    status, stage, message = batch[STATUS].copy(), batch[STAGE].copy(), batch[MESSAGE].copy()
    with ExitStack() as stack:
        sources = _Sources()
        stack.callback(sources.close_raster)
        for i in np.flatnonzero(status == TODO):
            try:
                image, nodata[i] = _read_one(sources, batch, i, prep.shortest_edge)
                if image is None:
                    status[i] = NODATA
                    continue
                image = np.ascontiguousarray(resize_shortest_side(image, prep))
            except Exception as exc:
                down = store_down(exc, str(batch[tiles.URI][i]))
                if down is not None:
                    raise down from None
                status[i], stage[i] = ERROR, STAGE_READ
                message[i] = failure_text(exc, str(batch[tiles.URI][i]))
                continue
            pixels[i] = image
            heights[i], widths[i] = image.shape[:2]
            status[i] = READY
    out = {c: batch[c] for c in READ_COLUMNS if c in batch}
    out.update({STATUS: status, STAGE: stage, MESSAGE: message, PIXELS: pixels,
                PIXELS_HEIGHT: heights, PIXELS_WIDTH: widths, tiles.NODATA_FRACTION: nodata})
    return {c: out[c] for c in READ_COLUMNS}
