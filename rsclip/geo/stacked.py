"""Stacked rasters: single-band assets of one scene (a STAC item's ``red``, ``green``, ``blue``) read as one
multi-band raster on one pixel grid.

A stack is named by a *stack URI*, ``stack:`` followed by its parts' URIs joined by ``|`` (``%`` and ``|``
inside a part are percent-escaped), so a tile of a stack has a uri like any other tile: its id, its preview
and its window all refer to the stack. :func:`rsclip.geo.raster.open_raster` opens each part as it opens
any raster (one driver per suffix, no ``/vsi`` names, the storage layer's timeouts) and hands them to
:class:`StackedRaster`.

The stack's grid is its finest part's (smallest pixels; the first on a tie). Parts on another grid (a 20 m
band beside 10 m ones, another CRS or extent) are resampled onto it, bilinearly, by a GDAL warped VRT built
in memory over the already opened part (no file is named or read by it). Band ``i`` of the stack is band 1
of part ``i``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rsclip.errors import InvalidInput

STACK_PREFIX = "stack:"
SEPARATOR = "|"
MAX_PARTS = 4
_ESCAPES = (("%", "%25"), ("|", "%7C"))


def is_stack(uri) -> bool:
    """Whether ``uri`` names a stack (:data:`STACK_PREFIX`)."""
    return str(uri).startswith(STACK_PREFIX)


def stack_uri(parts: Sequence[str]) -> str:
    """The stack URI of ``parts`` (two to :data:`MAX_PARTS` raster URIs, in band order)."""
    if not 2 <= len(parts) <= MAX_PARTS:
        raise InvalidInput(f"a stack has 2 to {MAX_PARTS} parts, got {len(parts)}")
    escaped = []
    for part in parts:
        for raw, code in _ESCAPES:
            part = str(part).replace(raw, code)
        escaped.append(part)
    return STACK_PREFIX + SEPARATOR.join(escaped)


def stack_parts(uri: str) -> list[str]:
    """The part URIs of a stack URI. Raises ``InvalidInput`` for a malformed stack (too few or many parts, a
    part that is empty or itself a stack)."""
    parts = []
    for part in str(uri)[len(STACK_PREFIX):].split(SEPARATOR):
        for raw, code in reversed(_ESCAPES):
            part = part.replace(code, raw)
        parts.append(part)
    if not 2 <= len(parts) <= MAX_PARTS or any(not p or is_stack(p) for p in parts):
        raise InvalidInput(f"{str(uri)[:200]}: not a stack of 2 to {MAX_PARTS} rasters")
    return parts


def _same_grid(a, b) -> bool:
    return (a.crs == b.crs and (a.width, a.height) == (b.width, b.height)
            and np.allclose(tuple(a.transform)[:6], tuple(b.transform)[:6], rtol=0, atol=1e-9))


def _pixel_area(src) -> float:
    t = src.transform
    return abs(t.a * t.e - t.b * t.d)


class StackedRaster:
    """Open single-band rasters read as the bands of one raster on the finest part's grid: the part of the
    rasterio dataset interface that :mod:`rsclip.geo.raster` uses (``read``, ``dataset_mask``, ``tags``,
    size, CRS, transform). Closes the warped views it made; the parts are closed by their opener."""

    def __init__(self, parts: Sequence):
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        if not parts:
            raise InvalidInput("a stack needs parts")
        self.parts = list(parts)
        grid = min(self.parts, key=_pixel_area)
        self.width, self.height, self.crs, self.transform = grid.width, grid.height, grid.crs, grid.transform
        self.count = len(self.parts)
        self.nodata = None
        self._views = [p if _same_grid(p, grid) else WarpedVRT(p, crs=grid.crs, transform=grid.transform,
                                                               width=grid.width, height=grid.height,
                                                               resampling=Resampling.bilinear)
                       for p in self.parts]
        dtype = np.result_type(*(np.dtype(p.dtypes[0]) for p in self.parts))
        self.dtypes = (dtype.name,) * self.count

    def _inside(self, window) -> bool:
        if window is None:
            return True
        x, y, w, h = (window.col_off, window.row_off, window.width, window.height)
        return x >= 0 and y >= 0 and x + w <= self.width and y + h <= self.height

    def read(self, indexes=None, window=None, out_shape=None, masked=False, boundless=False, **kwargs):
        """Bands ``indexes`` (1-based, one per part; default all) as ``(bands, H, W)``, like rasterio's."""
        single = isinstance(indexes, int)
        bands = [indexes] if single else list(indexes or range(1, self.count + 1))
        if any(not 1 <= b <= self.count for b in bands):
            raise InvalidInput(f"bands {bands} do not exist: the stack has {self.count}")
        boundless = bool(boundless) and not self._inside(window)
        shape = None if out_shape is None else tuple(out_shape)[-2:]
        layers = []
        for b in bands:
            view = self._views[b - 1]
            if boundless and view is not self.parts[b - 1]:
                raise InvalidInput("a window reaching outside a resampled stack cannot be read")
            layers.append(view.read(1, window=window, out_shape=shape, masked=masked, boundless=boundless,
                                    **kwargs).astype(self.dtypes[0], copy=False))
        data = np.ma.stack(layers) if masked else np.stack(layers)
        return data[0] if single else data

    def dataset_mask(self, out_shape=None, window=None, **kwargs) -> np.ndarray:
        """255 where every part has a valid pixel, 0 elsewhere (as rasterio's)."""
        masks = [v.dataset_mask(out_shape=out_shape, window=window, **kwargs) for v in self._views]
        return np.minimum.reduce(masks)

    def tags(self, bidx: int = 0, ns: str | None = None) -> dict:
        """The first part's metadata (a stack's parts come from one scene)."""
        return self.parts[0].tags(bidx, ns=ns) if ns else self.parts[0].tags(bidx)

    def close(self) -> None:
        for view, part in zip(self._views, self.parts):
            if view is not part:
                view.close()
