"""Find a text feature inside one image: cut it into patches, score each against the text, softmax.

``locate(image, "storage tanks")`` is the seed demo's "find text feature in image", extended to large
GeoTIFFs: the image is cut into ``tile``-pixel patches (the embedding job's grid, last row and column moved
back to end at the edge) or into a ``grid=(rows, cols)`` of equal parts; every patch is embedded, scored by
cosine similarity with the text, and the scores become probabilities by a softmax over the patches at the
model's own temperature (``exp(logit_scale)``).

Rasters (``.tif``/``.tiff``/``.jp2``) are read window by window through :mod:`rsclip.geo.raster`, locally or
from ``s3://`` (range reads); all-nodata patches are left out and georeferenced patches carry lon/lat
bounds. Heatmaps are drawn at preview size (a decimated read of big rasters), never at full resolution.
"""

from __future__ import annotations

import io
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from rsclip.geo import raster
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.geo.images import MAX_IMAGE_PIXELS, ImageInput, read_image, to_hwc_uint8
from rsclip.model.clip import ClipEncoder
from rsclip.model.vectors import softmax
from rsclip.geo.windows import DEFAULT_TILE_SIZE, Window, grid_cells, grid_offsets, split_cells
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.search.encoding import checked_text, looks_like_image_path
from rsclip.search.zeroshot import ModelLike, model_logit_scale, resolve_encoder

PATCH_COLUMNS = ("row", "col", tiles.X, tiles.Y, tiles.WIDTH, tiles.HEIGHT, *tiles.BOUNDS_COLUMNS, "score",
                 "probability")
ENCODE_BATCH = 64
# Most patches one call scores (a 9,400 px image in 16 px patches would be 345,000 model calls).
MAX_PATCHES = 4096
# Longest side of the picture under a heatmap (big rasters are read decimated, an overview on a COG).
PREVIEW_MAX_SIDE = 2048
# Longest side a raster patch is read at: larger patches are read decimated (the model sees 224 pixels),
# so a 2 x 2 grid over a 40,000 px scene reads four 1,024 px images, not four 20,000 px ones.
PATCH_MAX_SIDE = 1024


@dataclass(frozen=True)
class PatchGrid:
    """How to cut an image: ``tile`` pixels a side with ``overlap``, or ``grid`` = (rows, cols) parts."""

    tile: int | None = DEFAULT_TILE_SIZE
    grid: tuple[int, int] | None = None
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.grid is not None:
            if len(self.grid) != 2 or any(int(v) != v or v < 1 for v in self.grid):
                raise InvalidInput(f"grid must be two positive integers (rows, cols), got {self.grid!r}")
        elif self.tile is None or int(self.tile) != self.tile or self.tile < 2:
            raise InvalidInput(f"tile must be an integer of at least 2 pixels, got {self.tile!r}")
        elif not 0 <= self.overlap < self.tile:
            raise InvalidInput(f"overlap must be in [0, tile), got {self.overlap}")

    def windows(self, width: int, height: int) -> list[tuple[int, int, Window]]:
        """``(row, col, window)`` patches covering a ``width`` x ``height`` image, row-major.

        Raises ``InvalidInput`` when a grid asks for more parts than pixels and ``LimitExceeded`` beyond
        :data:`MAX_PATCHES` patches.
        """
        if self.grid is not None:
            rows, cols = (int(v) for v in self.grid)
            count = rows * cols
        else:
            tile = int(self.tile)
            count = len(grid_offsets(width, tile, self.overlap)) * len(grid_offsets(height, tile, self.overlap))
        if count > MAX_PATCHES:
            raise LimitExceeded(f"{count} patches of a {width}x{height} image exceed the limit of {MAX_PATCHES}: "
                                "use larger patches or a coarser grid")
        if self.grid is not None:
            return split_cells(width, height, rows, cols)
        return grid_cells(width, height, int(self.tile), self.overlap)


class PatchSource:
    """Pixels of an in-memory image, a chip file or a raster (read window by window); a context manager."""

    def __init__(self, image: ImageInput, bands: Sequence[int] | None = None, *, max_pixels: int = MAX_IMAGE_PIXELS):
        self._stack = ExitStack()
        self.src = self.scene = self.crs = None
        self.name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
        if isinstance(image, (str, os.PathLike)) and raster.is_raster(str(image)):
            self.src = self._stack.enter_context(raster.open_raster(str(image)))
            options = raster.RasterOptions(bands=tuple(bands) if bands else None)
            try:
                self.scene = raster.describe_scene(self.src, options)
            except InvalidInput as exc:
                self._stack.close()
                raise InvalidInput(f"{self.name}: {exc}") from None
            self.width, self.height, self.crs = self.src.width, self.src.height, self.scene.crs
            return
        if isinstance(image, (str, os.PathLike)):
            self.pixels = read_image(image, max_pixels=max_pixels)
        elif isinstance(image, (Image.Image, np.ndarray)):
            self.pixels = to_hwc_uint8(image)
        else:
            raise InvalidInput(f"expected an image path, URI, PIL image or uint8 array, got {type(image).__name__}")
        self.height, self.width = self.pixels.shape[:2]

    def __enter__(self) -> "PatchSource":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def read(self, window: Window) -> np.ndarray | None:
        """RGB uint8 pixels of ``window``; None when a raster window is entirely nodata."""
        if self.src is None:
            return window.crop(self.pixels)
        return raster.read_window(self.src, window, self.scene, max_side=PATCH_MAX_SIDE)

    def bounds(self, window: Window) -> tuple[float, float, float, float] | None:
        """WGS84 ``(lon_min, lat_min, lon_max, lat_max)`` of ``window``; None without georeference."""
        return raster.window_bounds_wgs84(self.src, window) if self.src is not None else None

    def preview(self, max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
        """The whole image as RGB uint8, decimated so no side exceeds ``max_side``."""
        shape = raster.fit_shape(self.width, self.height, max_side)
        if self.src is not None:
            return raster.read_scaled(self.src, self.scene, shape)
        if shape == self.pixels.shape[:2]:
            return self.pixels
        return np.asarray(Image.fromarray(self.pixels).resize(shape[::-1], Image.Resampling.BILINEAR))


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def query_embedding(encoder: ClipEncoder, text) -> np.ndarray:
    """The unit ``(D,)`` embedding of what to look for: a text (always text when a :class:`Text`), or an
    example image (path, PIL, array)."""
    if isinstance(text, str) and not looks_like_image_path(text):
        return encoder.encode_texts([checked_text(text, "the text to look for")])[0]
    if isinstance(text, (str, os.PathLike)):
        return encoder.encode_images([read_image(text)])[0]
    if isinstance(text, (Image.Image, np.ndarray)):
        return encoder.encode_images([to_hwc_uint8(text)])[0]
    raise InvalidInput(f"locate looks for a text or an example image, got {type(text).__name__}")


def _score_patches(source: PatchSource, windows, encoder: ClipEncoder, target: np.ndarray):
    """``(rows, scores)``: one row (row, col, window, bounds) per patch with valid pixels, and its cosine."""
    rows, scores = [], []
    for batch in _batches(windows, ENCODE_BATCH):
        pixels = [(item, source.read(item[2])) for item in batch]
        pixels = [(item, px) for item, px in pixels if px is not None]
        if not pixels:
            continue
        scores.append(encoder.encode_images([px for _, px in pixels]) @ target)  # (B,)
        for (r, c, win), _ in pixels:
            rows.append((r, c, *win, *(source.bounds(win) or (np.nan,) * 4)))
    return rows, scores


def locate(
    image: ImageInput,
    text: str | ImageInput,
    *,
    model: ModelLike = None,
    db=None,
    table: str = tiles.DEFAULT_TABLE,
    tile: int | None = None,
    grid: tuple[int, int] | None = None,
    overlap: int = 0,
    bands: Sequence[int] | None = None,
    logit_scale: float | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> pd.DataFrame:
    """Score every patch of ``image`` against ``text`` (or against an example image: path, PIL, array).

    Args:
        image: A local path or ``s3://`` URI (chips via Pillow, rasters window by window), a PIL image or an
            HWC uint8 array.
        text: What to look for: a text, or an example image (path, URI, PIL image, HWC uint8 array).
        model: A source or a loaded :class:`ClipEncoder` (None: the model of ``table`` in ``db`` when ``db``
            is given, else the default model).
        db, table: The tile table whose model scores the patches when ``model`` is None.
        tile: Patches ``tile`` pixels a side (default 224); not together with ``grid``.
        grid: ``(rows, cols)``: that many equal parts instead of tiles.
        overlap: Pixels that neighbouring ``tile`` patches share.
        bands: 1-based raster bands rendered as RGB.
        logit_scale: The softmax's scale (None: the model's own temperature).
        max_pixels: The most pixels of a chip read whole.

    Returns:
        A DataFrame, best patch first, with columns row, col, x, y, width, height, lon_min, lat_min, lon_max,
        lat_max (NaN without georeference), score (cosine similarity) and probability (softmax of
        ``logit_scale * score`` over the patches; sums to 1). ``frame.attrs`` holds width, height, crs, text.

    Raises:
        InvalidInput: (and subclasses) for blank text, both or neither usable tile/grid, unreadable images,
            too many patches (over :data:`MAX_PATCHES`) and an image with no valid patch.
    """
    if isinstance(text, str) and not looks_like_image_path(text):
        checked_text(text, "the text to look for")
    if tile is not None and grid is not None:
        raise InvalidInput("give either tile or grid, not both")
    plan = PatchGrid(tile=tile if tile is not None else DEFAULT_TILE_SIZE, grid=grid, overlap=overlap)
    encoder = resolve_encoder(model, db, table)
    scale = model_logit_scale(encoder) if logit_scale is None else float(logit_scale)
    with PatchSource(image, bands, max_pixels=max_pixels) as source:
        windows = plan.windows(source.width, source.height)
        rows, scores = _score_patches(source, windows, encoder, query_embedding(encoder, text))
    if not rows:
        raise InvalidInput(f"{source.name}: no patch holds valid pixels")
    frame = patch_frame(rows, np.concatenate(scores).astype(np.float64), scale)
    frame.attrs.update(width=source.width, height=source.height, crs=source.crs,
                       text=text if isinstance(text, str) else "<image>")
    return frame


def patch_frame(rows: list, score: np.ndarray, scale: float) -> pd.DataFrame:
    """The scored patches (:data:`PATCH_COLUMNS`), best first: ``score`` and its softmax at ``scale``."""
    frame = pd.DataFrame(rows, columns=PATCH_COLUMNS[:-2])
    frame["score"] = score
    frame["probability"] = softmax(scale * score[None, :])[0]
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def heatmap(patches: pd.DataFrame, width: int, height: int, column: str = "probability",
            shape: tuple[int, int] | None = None) -> np.ndarray:
    """A float map of ``shape`` = (rows, cols) pixels (default: the image's ``(height, width)``) over a
    ``width`` x ``height`` image: each pixel holds the largest ``column`` value of the patches over it (NaN
    where no patch lies). A smaller ``shape`` samples the patches at its pixel centres."""
    out_h, out_w = shape or (height, width)
    out = np.full((out_h, out_w), np.nan)
    sy, sx = out_h / height, out_w / width
    for x, y, w, h, v in patches[[tiles.X, tiles.Y, tiles.WIDTH, tiles.HEIGHT, column]].itertuples(index=False):
        top, bottom = int(np.ceil(y * sy - 0.5)), int(np.ceil((y + h) * sy - 0.5))
        left, right = int(np.ceil(x * sx - 0.5)), int(np.ceil((x + w) * sx - 0.5))
        region = out[max(top, 0) : bottom, max(left, 0) : right]
        np.fmax(region, v, out=region)
    return out


def blend(base: np.ndarray, norm: np.ndarray, cmap, alpha: float, band_rows: int = 64) -> np.ndarray:
    """RGB uint8 ``base`` with the colours of ``norm`` (values in [0, 1], NaN = no colour) through the
    matplotlib colormap ``cmap`` laid over it at opacity ``alpha``.

    Colours come from the colormap's own table (what ``cmap(norm)`` gives) and the picture is blended
    ``band_rows`` rows at a time, so the float working arrays stay a few MB whatever the picture's size.
    """
    table = cmap(np.arange(cmap.N))[:, :3] * 255.0  # (N, 3): the colours cmap(norm) picks from
    out = np.empty_like(base)
    for top in range(0, base.shape[0], band_rows):
        part = norm[top : top + band_rows]
        index = np.minimum((np.nan_to_num(part, nan=0.0) * cmap.N).astype(np.int64), cmap.N - 1)
        weight = np.where(np.isnan(part), 0.0, alpha)[..., None]
        pixels = base[top : top + band_rows].astype(np.float64)
        out[top : top + band_rows] = (pixels * (1.0 - weight) + table[index] * weight).round().astype(np.uint8)
    return out


def render_heatmap(
    image: ImageInput,
    patches: pd.DataFrame,
    out: str | os.PathLike | None = None,
    *,
    column: str = "probability",
    alpha: float = 0.5,
    colormap: str = "inferno",
    bands: Sequence[int] | None = None,
    max_side: int = PREVIEW_MAX_SIDE,
) -> bytes:
    """A PNG of ``image`` with ``patches[column]`` (min-max normalised) overlaid as a colour heatmap.

    Drawn at preview size (big rasters from a decimated read).

    Args:
        image: The image the patches were scored on (as for :func:`locate`).
        patches: The frame :func:`locate` returned.
        out: Where to write the PNG too (local path or ``s3://``); None: nowhere.
        column: The column of ``patches`` drawn.
        alpha: The heatmap's opacity, in [0, 1].
        colormap: A matplotlib colormap name.
        bands: 1-based raster bands rendered as RGB.
        max_side: The longest side of the picture.

    Returns:
        The PNG's bytes.

    Raises:
        InvalidInput: For an unknown column or an ``alpha`` outside [0, 1].
    """
    from matplotlib import colormaps

    if column not in patches.columns:
        raise InvalidInput(f"patches have no column {column!r}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha must be in [0, 1], got {alpha}")
    with PatchSource(image, bands) as source:
        base = source.preview(max_side)
        width, height = source.width, source.height
    values = heatmap(patches, width, height, column, shape=base.shape[:2])
    lo, hi = np.nanmin(values), np.nanmax(values)
    if hi > lo:  # min-max normalised in place: one preview-sized float array, not three
        values -= lo
        values /= hi - lo
    else:
        values[~np.isnan(values)] = 1.0
    buf = io.BytesIO()
    Image.fromarray(blend(base, values, colormaps[colormap], alpha)).save(buf, format="PNG")
    data = buf.getvalue()
    if out is not None:
        storage.write_bytes(str(out), data)
    return data
