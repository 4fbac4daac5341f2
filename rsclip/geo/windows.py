"""Pixel windows and the grid that cuts a raster into tiles.

A window is ``(x, y, width, height)`` in pixels of a source image: the four numbers the tile table stores,
the embedding job reads, ``rsclip.locate`` scores and the web app previews. :class:`Window` is a named tuple,
so a plain 4-tuple works wherever one is expected.
"""

from __future__ import annotations

from typing import NamedTuple

from rsclip.errors import InvalidInput

DEFAULT_TILE_SIZE = 224
# Grid windows anchored to the CRS's origin (scenes of one grid line up across dates) or each scene's corner.
GRIDS = (GRID_CRS, GRID_SCENE) = ("crs", "scene")
# Rasters with a CRS are cut into the tile grid whatever their size, or whole up to max_chip px a side (how
# tables were cut before; such a table keeps that rule: rsclip.table.anchors.settle_scenes).
SCENE_RULES = (SCENES_TILED, SCENES_WHOLE) = ("tiled", "max-chip")


class _WindowFields(NamedTuple):
    x: int
    y: int
    width: int
    height: int


class Window(_WindowFields):
    """A pixel window ``(x, y, width, height)``; the whole image is ``(0, 0, W, H)``.

    Raises :class:`~rsclip.errors.InvalidInput` for a negative offset or a size below one pixel.
    """

    __slots__ = ()

    def __new__(cls, x: int, y: int, width: int, height: int) -> "Window":
        values = tuple(int(v) for v in (x, y, width, height))
        if values[2] < 1 or values[3] < 1:
            raise InvalidInput(f"window must have a positive size, got {values[2]}x{values[3]}")
        if values[0] < 0 or values[1] < 0:
            raise InvalidInput(f"window offset must not be negative, got ({values[0]}, {values[1]})")
        return super().__new__(cls, *values)

    def crop(self, image):
        """The part of an ``(H, W, ...)`` array inside the window (smaller where it leaves the image)."""
        return image[self.y : self.y + self.height, self.x : self.x + self.width]


def grid_offsets(length: int, tile: int, overlap: int = 0, origin: int | None = None) -> list[int]:
    """Start offsets of ``tile``-long windows with ``overlap`` along an axis of ``length`` pixels.

    Windows step by ``tile - overlap`` from the raster's first pixel, or, with ``origin`` (how many pixels
    the raster's first pixel lies from its CRS's origin), from wherever ``origin + offset`` is a multiple of
    the step: the grid is anchored to the CRS, so scenes of one pixel grid get the same windows wherever
    their corners are. Windows cut by the raster's edges are moved inward to stay inside it, full size (the
    first one to 0, the last one to end at the edge). An axis shorter than ``tile`` gets one window at 0.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    first = 0 if origin is None else (-int(origin)) % stride
    offsets = list(range(first, length - tile + 1, stride))
    if not offsets or offsets[0] > 0:
        offsets.insert(0, 0)
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return offsets


def grid_windows(width: int, height: int, tile: int, overlap: int = 0,
                 origin: tuple[int, int] | None = None) -> list[Window]:
    """Row-major grid windows covering a ``width`` x ``height`` raster (see :func:`grid_offsets`; ``origin``
    = the ``(column, row)`` of the raster's first pixel counted from its CRS's origin); windows are
    ``min(tile, side)`` pixels a side."""
    w, h = min(tile, width), min(tile, height)
    xs = grid_offsets(width, tile, overlap, None if origin is None else origin[0])
    ys = grid_offsets(height, tile, overlap, None if origin is None else origin[1])
    return [Window(x, y, w, h) for y in ys for x in xs]


def grid_cells(width: int, height: int, tile: int, overlap: int = 0) -> list[tuple[int, int, Window]]:
    """``(row, col, window)`` of the tile grid (:func:`grid_windows` with their grid positions)."""
    xs, ys = grid_offsets(width, tile, overlap), grid_offsets(height, tile, overlap)
    w, h = min(tile, width), min(tile, height)
    return [(r, c, Window(x, y, w, h)) for r, y in enumerate(ys) for c, x in enumerate(xs)]


def split_cells(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, Window]]:
    """``(row, col, window)`` of ``rows`` x ``cols`` near-equal parts of a ``width`` x ``height`` image.

    Raises :class:`~rsclip.errors.InvalidInput` when it asks for more parts than pixels.
    """
    if rows > height or cols > width:
        raise InvalidInput(f"grid {rows}x{cols} is finer than the {width}x{height} pixel image")
    xs = [round(i * width / cols) for i in range(cols + 1)]
    ys = [round(j * height / rows) for j in range(rows + 1)]
    return [(r, c, Window(xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r]))
            for r in range(rows) for c in range(cols)]
