"""Raster access and chipping: grid windows, band choice, scaling to uint8, nodata, WGS84 bounds.

Scenes (GeoTIFF, COG, any GDAL raster) are opened with rasterio straight from object storage (``/vsis3/``
range reads) and read window by window, never downloaded whole. The GDAL settings for cloud-optimised
GeoTIFFs and for S3-compatible endpoints live in one place, :func:`gdal_env`.

A window is ``(x, y, width, height)`` in pixels of the source, the same four numbers the tile table stores.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from rsclip import storage

WindowTuple = tuple[int, int, int, int]

DEFAULT_TILE_SIZE = 224
DEFAULT_MAX_CHIP = 1024
# Per-scene percentile stretch for data that is not uint8 (robust to hot pixels and deep shadows).
DEFAULT_PERCENTILES = (2.0, 98.0)
# Percentiles are estimated on a decimated read whose longer side is at most this many pixels (an overview
# read on a COG), so a scene's statistics cost one small read, not a pass over the scene.
STATS_MAX_SIDE = 1024
# Band data types that can be scaled to uint8; complex data has no sensible image rendering.
SUPPORTED_KINDS = ("u", "i", "f", "b")


@dataclass(frozen=True)
class RasterOptions:
    """How scenes become tiles.

    ``bands``: 1-based band numbers (three, or one for grey); None = the first three (or band 1 when the
    scene has fewer). ``scale``: a fixed ``(lo, hi)`` stretch for non-uint8 data; None = per-scene
    2-98 percentiles per band. Files no larger than ``max_chip`` pixels a side are one tile.
    """

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = 0
    bands: tuple[int, ...] | None = None
    scale: tuple[float, float] | None = None
    max_chip: int = DEFAULT_MAX_CHIP

    def __post_init__(self) -> None:
        if self.tile_size < 2:
            raise ValueError(f"tile size must be at least 2 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile size), got {self.overlap}")
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise ValueError(f"bands must be one or three 1-based band numbers, got {self.bands}")
        if self.scale is not None and not (
            len(self.scale) == 2 and all(math.isfinite(v) for v in self.scale) and self.scale[0] < self.scale[1]
        ):
            raise ValueError(f"scale must be two finite numbers lo < hi, got {self.scale}")
        if self.max_chip < 2:
            raise ValueError(f"max chip size must be at least 2 pixels, got {self.max_chip}")


def grid_offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of ``tile``-long windows with ``overlap`` along an axis of ``length`` pixels.

    Windows step by ``tile - overlap``; the last one is moved back so it ends at the edge (kept inside the
    raster, full size). An axis shorter than ``tile`` gets one window at 0.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    offsets = list(range(0, length - tile + 1, stride))
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return offsets


def grid_windows(width: int, height: int, tile: int, overlap: int = 0) -> list[WindowTuple]:
    """Row-major grid windows ``(x, y, w, h)`` covering a ``width`` x ``height`` raster (see
    :func:`grid_offsets`); windows are ``min(tile, side)`` pixels a side."""
    w, h = min(tile, width), min(tile, height)
    return [
        (x, y, w, h)
        for y in grid_offsets(height, tile, overlap)
        for x in grid_offsets(width, tile, overlap)
    ]


def gdal_path(uri: str) -> str:
    """The GDAL path of a local path or ``s3://bucket/key`` (``/vsis3/bucket/key``)."""
    if storage.is_remote(uri):
        parsed = urlparse(uri)
        return f"/vsis3/{parsed.netloc}{parsed.path}"
    return str(storage.local_path(uri))


def gdal_options() -> dict[str, str | int]:
    """GDAL configuration for reading COGs over HTTP range requests (credentials excepted, see
    :func:`aws_session`).

    An ``AWS_ENDPOINT_URL`` (SeaweedFS, MinIO) becomes GDAL's own ``AWS_S3_ENDPOINT``/``AWS_HTTPS``/
    path-style settings; listing sidecar files is disabled (one GET per scene instead of a directory scan).
    """
    aws = storage.aws_settings()
    opts: dict[str, str | int] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.img,.vrt",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_TIMEOUT": "60",
        "GDAL_HTTP_CONNECTTIMEOUT": "10",
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(32 * 1024 * 1024),
        "GDAL_CACHEMAX": 256,  # MB; rasterio wants an int here
    }
    if "endpoint" in aws:
        endpoint = urlparse(aws["endpoint"])
        opts["AWS_S3_ENDPOINT"] = endpoint.netloc + endpoint.path.rstrip("/")
        opts["AWS_HTTPS"] = "NO" if endpoint.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def aws_session():
    """A rasterio ``AWSSession`` from the AWS variables (rasterio takes credentials only this way); None
    when no key is set, so GDAL's own chain (instance profile, ~/.aws) applies."""
    from rasterio.session import AWSSession

    aws = storage.aws_settings()
    if "key" not in aws:
        return None
    endpoint = urlparse(aws["endpoint"]) if "endpoint" in aws else None
    return AWSSession(
        aws_access_key_id=aws["key"], aws_secret_access_key=aws.get("secret"),
        aws_session_token=aws.get("token"), region_name=aws.get("region"),
        endpoint_url=(endpoint.netloc + endpoint.path.rstrip("/")) if endpoint else None,
    )


@contextmanager
def gdal_env() -> Iterator[None]:
    """A ``rasterio.Env`` with :func:`gdal_options` and :func:`aws_session` applied."""
    import rasterio

    session = aws_session()
    kwargs = {"session": session} if session is not None else {}
    with rasterio.Env(**kwargs, **gdal_options()):
        yield


@dataclass(frozen=True)
class SceneInfo:
    """What the planner needs of a scene: size, bands read, scaling, georeference."""

    width: int
    height: int
    count: int
    dtype: str
    bands: tuple[int, ...]
    scale_lo: tuple[float, ...] | None  # per chosen band; None for uint8 data (no scaling)
    scale_hi: tuple[float, ...] | None
    crs: str | None


def choose_bands(count: int, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The 1-based bands to read from a ``count``-band raster. Raises ``ValueError`` when out of range."""
    if bands is None:
        return (1, 2, 3) if count >= 3 else (1,)
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise ValueError(f"bands {bad} do not exist: the raster has {count} band(s)")
    return tuple(int(b) for b in bands)


def crs_string(crs) -> str | None:
    """A compact CRS text: ``EPSG:n`` when the CRS has an EPSG code, else WKT; None without a CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def scene_percentiles(src, bands: Sequence[int], percentiles=DEFAULT_PERCENTILES) -> tuple[list[float], list[float]]:
    """Per-band ``(lo, hi)`` percentiles of valid pixels, from a decimated read (an overview on a COG).

    Raises ``ValueError`` when the scene holds no valid pixel (all nodata).
    """
    factor = max(1, math.ceil(max(src.width, src.height) / STATS_MAX_SIDE))
    shape = (len(bands), max(1, src.height // factor), max(1, src.width // factor))
    data = src.read(list(bands), out_shape=shape, masked=True)
    lo, hi = [], []
    for band in data:
        values = band.compressed() if np.ma.isMaskedArray(band) else band.ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("all pixels are nodata")
        a, b = np.percentile(values, percentiles)
        lo.append(float(a))
        hi.append(float(b))
    return lo, hi


def describe_scene(src, options: RasterOptions) -> SceneInfo:
    """The :class:`SceneInfo` of an open rasterio dataset.

    Raises ``ValueError`` for unsupported data types (complex), bands out of range and scenes whose
    every pixel is nodata.
    """
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind not in SUPPORTED_KINDS:
        raise ValueError(f"unsupported data type {dtype.name}: bands must be integer or floating point")
    bands = choose_bands(src.count, options.bands)
    lo = hi = None
    if dtype != np.uint8:
        if options.scale is not None:
            lo, hi = [options.scale[0]] * len(bands), [options.scale[1]] * len(bands)
        else:
            lo, hi = scene_percentiles(src, bands)
    else:
        mask = src.dataset_mask(out_shape=(max(1, src.height // 8), max(1, src.width // 8)))
        if not mask.any() and not src.dataset_mask().any():
            raise ValueError("all pixels are nodata")
    return SceneInfo(
        width=src.width, height=src.height, count=src.count, dtype=dtype.name, bands=bands,
        scale_lo=tuple(lo) if lo is not None else None, scale_hi=tuple(hi) if hi is not None else None,
        crs=crs_string(src.crs),
    )


def window_bounds_wgs84(src, window: WindowTuple) -> tuple[float, float, float, float] | None:
    """``(lon_min, lat_min, lon_max, lat_max)`` of ``window`` (densified reprojection of its bounds), or
    None when the raster has no CRS."""
    if src.crs is None:
        return None
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, bounds

    x, y, w, h = window
    left, bottom, right, top = bounds(Window(x, y, w, h), src.transform)
    return tuple(float(v) for v in transform_bounds(src.crs, "EPSG:4326", left, bottom, right, top))


def to_uint8(data: np.ndarray, lo: Sequence[float] | None, hi: Sequence[float] | None) -> np.ndarray:
    """``(bands, H, W)`` data as uint8, stretching band ``i`` linearly from ``[lo[i], hi[i]]`` to [0, 255].

    uint8 data with ``lo`` None passes unchanged; NaN becomes 0.
    """
    if lo is None or hi is None:
        if data.dtype != np.uint8:
            raise ValueError(f"{data.dtype} data needs a scale range")
        return data
    out = np.empty(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        span = hi[i] - lo[i] or 1.0
        scaled = (band.astype(np.float32) - np.float32(lo[i])) * np.float32(255.0 / span)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        out[i] = np.clip(scaled, 0.0, 255.0).round()
    return out


def read_window(src, window: WindowTuple, scene: SceneInfo) -> np.ndarray | None:
    """The RGB ``(h, w, 3)`` uint8 pixels of ``window``, or None when every pixel is nodata.

    Nodata pixels (nodata value, alpha or internal mask, NaN) become 0. A one-band choice is repeated to
    grey RGB.
    """
    from rasterio.windows import Window

    x, y, w, h = window
    data = src.read(list(scene.bands), window=Window(x, y, w, h), masked=True)
    mask = np.ma.getmaskarray(data)
    if np.issubdtype(data.dtype, np.floating):
        mask = mask | ~np.isfinite(np.ma.getdata(data))
    if mask.all():
        return None
    pixels = to_uint8(np.ma.getdata(data), scene.scale_lo, scene.scale_hi)
    if mask.any():
        pixels = np.where(mask, np.uint8(0), pixels)
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def plan_scene(src, options: RasterOptions) -> tuple[SceneInfo, list[WindowTuple]]:
    """The scene description and the windows to cut from it: the whole raster when no side exceeds
    ``options.max_chip``, else the ``tile_size``/``overlap`` grid."""
    scene = describe_scene(src, options)
    if max(scene.width, scene.height) <= options.max_chip:
        return scene, [(0, 0, scene.width, scene.height)]
    return scene, grid_windows(scene.width, scene.height, options.tile_size, options.overlap)
