"""Find a text feature inside one image: cut it into patches, score each against the text, softmax.

``locate(image, "storage tanks")`` is the seed demo's "find text feature in image", extended to large
GeoTIFFs: the image is cut into ``tile``-pixel patches (the same grid the embedding job uses, last row and
column moved back to end at the edge) or into a ``grid=(rows, cols)`` of equal parts; every patch is embedded,
scored by cosine similarity with the text, and the scores become probabilities by a softmax over the patches
at the model's own temperature (``exp(logit_scale)``, as the seed's demo used the model's logits).

Rasters (``.tif``/``.tiff`` and anything else GDAL opens when Pillow cannot) are read window by window with
rasterio, locally or from ``s3://`` (range reads), through :mod:`rsclip.raster` (window grid, band choice,
scaling to uint8, nodata, WGS84 bounds); patches that are entirely nodata are left out. Georeferenced
patches carry lon/lat bounds.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from rsclip import raster, storage, store
from rsclip.imageio import read_image
from rsclip.metrics import softmax
from rsclip.model import ClipEncoder, to_hwc_uint8
from rsclip.zeroshot import ModelLike, model_logit_scale, resolve_encoder

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
PATCH_COLUMNS = ("row", "col", store.X, store.Y, store.WIDTH, store.HEIGHT, *store.BOUNDS_COLUMNS, "score", "probability")
ENCODE_BATCH = 64
# Longest side of the picture under a heatmap of a big raster (read decimated, an overview on a COG).
PREVIEW_MAX_SIDE = 2048

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class PatchGrid:
    """How to cut an image: ``tile`` pixels a side with ``overlap``, or ``grid`` = (rows, cols) parts."""

    tile: int | None = raster.DEFAULT_TILE_SIZE
    grid: tuple[int, int] | None = None
    overlap: int = 0

    def __post_init__(self) -> None:
        if self.grid is not None:
            if len(self.grid) != 2 or any(int(v) != v or v < 1 for v in self.grid):
                raise ValueError(f"grid must be two positive integers (rows, cols), got {self.grid!r}")
        elif self.tile is None or int(self.tile) != self.tile or self.tile < 2:
            raise ValueError(f"tile must be an integer of at least 2 pixels, got {self.tile!r}")
        elif not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile), got {self.overlap}")

    def windows(self, width: int, height: int) -> list[tuple[int, int, Window]]:
        """``(row, col, (x, y, w, h))`` patches covering a ``width`` x ``height`` image, row-major.

        Raises ``ValueError`` when a grid asks for more parts than pixels.
        """
        if self.grid is not None:
            rows, cols = (int(v) for v in self.grid)
            if rows > height or cols > width:
                raise ValueError(f"grid {rows}x{cols} is finer than the {width}x{height} pixel image")
            xs = [round(i * width / cols) for i in range(cols + 1)]
            ys = [round(j * height / rows) for j in range(rows + 1)]
            return [(r, c, (xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r])) for r in range(rows) for c in range(cols)]
        col_x = raster.grid_offsets(width, int(self.tile), self.overlap)
        row_y = raster.grid_offsets(height, int(self.tile), self.overlap)
        w, h = min(int(self.tile), width), min(int(self.tile), height)
        return [(r, c, (x, y, w, h)) for r, y in enumerate(row_y) for c, x in enumerate(col_x)]


def _is_raster(source: str) -> bool:
    return source.lower().endswith(RASTER_SUFFIXES)


class _Source:
    """Pixels of an in-memory image or a raster opened with rasterio, read window by window."""

    def __init__(self, image: ImageInput, bands: Sequence[int] | None = None):
        self.src = self.scene = None
        self.crs = None
        self.name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
        if isinstance(image, (str, os.PathLike)) and _is_raster(str(image)):
            self._open_raster(str(image), bands)
        elif isinstance(image, (str, os.PathLike)):
            self.pixels = read_image(image)
        elif isinstance(image, (Image.Image, np.ndarray)):
            self.pixels = to_hwc_uint8(image)
        else:
            raise ValueError(f"expected an image path, URI, PIL image or uint8 array, got {type(image).__name__}")
        if self.src is None:
            self.height, self.width = self.pixels.shape[:2]

    def _open_raster(self, uri: str, bands: Sequence[int] | None) -> None:
        import rasterio

        self._env = raster.gdal_env()
        self._env.__enter__()
        try:
            self.src = rasterio.open(raster.gdal_path(uri))
        except rasterio.errors.RasterioIOError as exc:
            self._env.__exit__(None, None, None)
            raise ValueError(f"cannot open raster {uri}: {exc}") from None
        self.scene = raster.describe_scene(self.src, raster.RasterOptions(bands=tuple(bands) if bands else None))
        self.width, self.height = self.src.width, self.src.height
        self.crs = self.scene.crs

    def close(self) -> None:
        if self.src is not None:
            self.src.close()
            self._env.__exit__(None, None, None)
            self.src = None

    def read(self, window: Window) -> np.ndarray | None:
        """RGB uint8 pixels of ``window``; None when a raster window is entirely nodata."""
        if self.src is None:
            x, y, w, h = window
            return self.pixels[y : y + h, x : x + w]
        return raster.read_window(self.src, window, self.scene)

    def bounds(self, window: Window) -> tuple[float, float, float, float] | None:
        """WGS84 ``(lon_min, lat_min, lon_max, lat_max)`` of ``window``; None without georeference."""
        return raster.window_bounds_wgs84(self.src, window) if self.src is not None else None

    def preview(self, max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
        """The whole image as RGB uint8, decimated so no side exceeds ``max_side``."""
        if self.src is None:
            return self.pixels
        factor = max(1.0, max(self.width, self.height) / max_side)
        shape = (len(self.scene.bands), max(1, round(self.height / factor)), max(1, round(self.width / factor)))
        data = self.src.read(list(self.scene.bands), out_shape=shape, masked=True)
        mask = np.ma.getmaskarray(data)
        pixels = raster.to_uint8(np.ma.getdata(data), self.scene.scale_lo, self.scene.scale_hi)
        pixels = np.where(mask, np.uint8(0), pixels)
        if pixels.shape[0] == 1:
            pixels = np.repeat(pixels, 3, axis=0)
        return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _query_embedding(encoder: ClipEncoder, text) -> np.ndarray:
    """The unit ``(D,)`` embedding of what to look for: a text, or an example image (path, PIL, array)."""
    from rsclip.query import _looks_like_image_path

    if isinstance(text, str) and not _looks_like_image_path(text):
        if not text.strip():
            raise ValueError("locate needs a non-empty text to look for")
        return encoder.encode_texts([text])[0]
    if isinstance(text, (str, os.PathLike)):
        return encoder.encode_images([read_image(text)])[0]
    if isinstance(text, (Image.Image, np.ndarray)):
        return encoder.encode_images([to_hwc_uint8(text)])[0]
    raise ValueError(f"locate looks for a text or an example image, got {type(text).__name__}")


def locate(
    image: ImageInput,
    text: str | ImageInput,
    *,
    model: ModelLike = None,
    tile: int | None = None,
    grid: tuple[int, int] | None = None,
    overlap: int = 0,
    bands: Sequence[int] | None = None,
    logit_scale: float | None = None,
) -> pd.DataFrame:
    """Score every patch of ``image`` against ``text`` (or against an example image: path, PIL, array).

    ``image``: a local path or ``s3://`` URI (JPEG/PNG via Pillow; GeoTIFF and other rasters via rasterio,
    read window by window), a PIL image or an HWC uint8 array. Patches: ``tile`` pixels a side (default
    224, ``overlap`` pixels shared) or ``grid=(rows, cols)`` equal parts (not both). ``bands``: 1-based
    raster bands to render as RGB (default the first three). ``model``: a source or a loaded
    :class:`ClipEncoder` (default :data:`rsclip.model.DEFAULT_MODEL`).

    Returns a DataFrame, best patch first, with columns row, col, x, y, width, height, lon_min, lat_min,
    lon_max, lat_max (NaN without georeference), score (cosine similarity) and probability (softmax of
    ``logit_scale * score`` over the patches; sums to 1). ``frame.attrs`` holds width, height, crs, text.
    Raises ``ValueError`` for blank text, both or neither usable tile/grid, unreadable images, and an
    image with no valid patch.
    """
    if isinstance(text, str) and not text.strip():
        raise ValueError("locate needs a non-empty text to look for")
    if tile is not None and grid is not None:
        raise ValueError("give either tile or grid, not both")
    plan = PatchGrid(tile=tile if tile is not None else raster.DEFAULT_TILE_SIZE, grid=grid, overlap=overlap)
    encoder = resolve_encoder(model)
    scale = model_logit_scale(encoder) if logit_scale is None else float(logit_scale)
    source = _Source(image, bands)
    try:
        windows = plan.windows(source.width, source.height)
        text_emb = _query_embedding(encoder, text)  # (D,)
        rows, scores = [], []
        for batch in _batches(windows, ENCODE_BATCH):
            pixels = [(item, source.read(item[2])) for item in batch]
            pixels = [(item, px) for item, px in pixels if px is not None]
            if not pixels:
                continue
            emb = encoder.encode_images([px for _, px in pixels])  # (B, D)
            scores.append(emb @ text_emb)
            for (r, c, win), _ in pixels:
                lonlat = source.bounds(win) or (np.nan,) * 4
                rows.append((r, c, *win, *lonlat))
    finally:
        source.close()
    if not rows:
        raise ValueError(f"{source.name}: no patch holds valid pixels")
    score = np.concatenate(scores).astype(np.float64)
    frame = pd.DataFrame(rows, columns=PATCH_COLUMNS[:-2])
    frame["score"] = score
    frame["probability"] = softmax(scale * score[None, :])[0]
    frame = frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    frame.attrs.update(width=source.width, height=source.height, crs=source.crs,
                       text=text if isinstance(text, str) else "<image>")
    return frame


def heatmap(patches: pd.DataFrame, width: int, height: int, column: str = "probability") -> np.ndarray:
    """A ``(height, width)`` float map: each pixel holds the largest ``column`` value of the patches over it
    (NaN where no patch lies)."""
    out = np.full((height, width), np.nan)
    for x, y, w, h, v in patches[[store.X, store.Y, store.WIDTH, store.HEIGHT, column]].itertuples(index=False):
        region = out[y : y + h, x : x + w]
        np.fmax(region, v, out=region)
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
) -> bytes:
    """A PNG of ``image`` with ``patches[column]`` (min-max normalised) overlaid as a colour heatmap.

    Big rasters are drawn from a decimated read (longest side at most 2048 pixels). Writes the PNG to
    ``out`` (local path or ``s3://``) when given; returns its bytes. Raises ``ValueError`` for an unknown
    column or an ``alpha`` outside [0, 1].
    """
    from matplotlib import colormaps

    if column not in patches.columns:
        raise ValueError(f"patches have no column {column!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    source = _Source(image, bands)
    try:
        base = source.preview()
        width, height = source.width, source.height
    finally:
        source.close()
    values = heatmap(patches, width, height, column)
    lo, hi = np.nanmin(values), np.nanmax(values)
    norm = (values - lo) / (hi - lo) if hi > lo else np.where(np.isnan(values), np.nan, 1.0)
    ph, pw = base.shape[:2]
    if (ph, pw) != (height, width):  # sample the map at the preview's pixel centres
        ys = np.minimum(((np.arange(ph) + 0.5) * height / ph).astype(int), height - 1)
        xs = np.minimum(((np.arange(pw) + 0.5) * width / pw).astype(int), width - 1)
        norm = norm[np.ix_(ys, xs)]
    colours = colormaps[colormap](np.nan_to_num(norm, nan=0.0))[..., :3] * 255.0  # (H, W, 3)
    weight = np.where(np.isnan(norm), 0.0, alpha)[..., None]
    blended = (base.astype(np.float64) * (1.0 - weight) + colours * weight).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blended).save(buf, format="PNG")
    data = buf.getvalue()
    if out is not None:
        fs, path = storage.filesystem(out)
        with fs.open(path, "wb") as f:
            f.write(data)
    return data
