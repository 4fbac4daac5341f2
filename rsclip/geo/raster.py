"""Rasters: opening them safely, describing scenes, reading windows as RGB uint8, WGS84 bounds.

Scenes (GeoTIFF, COG, JPEG 2000) are opened with rasterio straight from object storage or HTTP(S) (``/vsis3/``,
``/vsicurl/`` range reads) and read window by window, never downloaded whole; stacks of single-band assets
(:mod:`rsclip.geo.stacked`) as one raster. A raster is opened only by the driver its name claims
(:data:`DRIVER_BY_SUFFIX`): a ``x.tif`` that is really a VRT, an ENVI header or anything else that names other
files or URLs is refused, never followed. GDAL settings (COG reads, S3 endpoints, hardening): :mod:`~.storage`.

Every reader here turns bands into pixels the same way (:func:`masked_to_rgb`): the chosen bands, scaled to
uint8 (per-scene percentiles or a fixed range for non-uint8 data), nodata/mask/NaN pixels black, one band
repeated to grey.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np

from rsclip.errors import InvalidInput, StoreUnavailable, UnsafeInput
from rsclip.geo import formats, stacked
from rsclip.geo.windows import DEFAULT_TILE_SIZE, GRID_SCENE, GRIDS, Window, grid_windows
from rsclip.runtime import faults, storage
from rsclip.runtime.flags import setting
from rsclip.runtime.reporting import one_line

DEFAULT_MAX_CHIP = 1024
# The one list of what is read as a raster, and the only GDAL driver each may be opened with.
DRIVER_BY_SUFFIX = {suffix: f.gdal for suffix, f in formats.FORMAT_BY_SUFFIX.items() if f.gdal}
RASTER_SUFFIXES = tuple(DRIVER_BY_SUFFIX)
ALLOWED_DRIVERS = frozenset(DRIVER_BY_SUFFIX.values())
# URI schemes a raster is opened from; rasterio would turn any other (http, zip, gs...) into a GDAL
# virtual file system (/vsicurl/, /vsizip/...) and fetch or unpack what the name points at.
RASTER_SCHEMES = ("", "file", *storage.S3_SCHEMES, *storage.HTTP_SCHEMES)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Per-scene percentile stretch for data that is not uint8 (robust to hot pixels and deep shadows).
DEFAULT_PERCENTILES = (2.0, 98.0)
# Percentiles are estimated on a decimated read whose longer side is at most this many pixels (an overview
# read on a COG), so a scene's statistics cost one small read, not a pass over the scene.
STATS_MAX_SIDE = 1024
# Band data types that can be scaled to uint8; complex data has no sensible image rendering.
SUPPORTED_KINDS = ("u", "i", "f", "b")


def is_raster(name: str) -> bool:
    """True when ``name`` (path, URI or upload name) is read through GDAL as a raster."""
    return formats.suffix_of(name) in DRIVER_BY_SUFFIX


def driver_for(name: str) -> str:
    """The one GDAL driver allowed to open ``name``. Raises :class:`UnsafeInput` for other suffixes."""
    suffix = formats.suffix_of(name)
    if suffix not in DRIVER_BY_SUFFIX:
        raise UnsafeInput(f"{name}: not a raster rsclip opens (allowed: {', '.join(RASTER_SUFFIXES)})")
    return DRIVER_BY_SUFFIX[suffix]


@dataclass(frozen=True)
class RasterOptions:
    """How scenes become tiles.

    ``bands``: 1-based band numbers (three, or one for grey); None = the first three (or band 1 when the
    scene has fewer). ``scale``: a fixed ``(lo, hi)`` stretch for non-uint8 data; None = per-scene
    2-98 percentiles per band. Images and rasters without CRS up to ``max_chip`` px a side are one tile.
    """

    tile_size: int = setting(DEFAULT_TILE_SIZE, group="tiling", help="grid window side, pixels")
    overlap: int = setting(0, group="tiling", help="pixels shared by neighbouring grid windows")
    bands: tuple[int, ...] | None = setting(
        None, group="tiling", help="1-based bands read as RGB, e.g. 4,3,2 (default: the first three)")
    scale: tuple[float, float] | None = setting(
        None, group="tiling", help="lo,hi stretch for non-uint8 data (default: per-scene 2-98 percentiles)")
    max_chip: int = setting(DEFAULT_MAX_CHIP, group="tiling",
                            help="images (rasters without CRS too) up to this many pixels a side are one tile")
    grid: str | None = setting(None, group="tiling", choices=GRIDS,
                               help="anchor windows to the CRS (multiples of the tile size in map units: scenes "
                                    "of one grid line up across dates) or to each scene's corner (default: what "
                                    "the table records; crs for a new table)")

    def __post_init__(self) -> None:
        if self.tile_size < 2:
            raise InvalidInput(f"tile size must be at least 2 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise InvalidInput(f"overlap must be in [0, tile size), got {self.overlap}")
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise InvalidInput(f"bands must be one or three 1-based band numbers, got {self.bands}")
        if self.scale is not None and not (
            len(self.scale) == 2 and all(math.isfinite(v) for v in self.scale) and self.scale[0] < self.scale[1]
        ):
            raise InvalidInput(f"scale must be two finite numbers lo < hi, got {self.scale}")
        if self.max_chip < 2:
            raise InvalidInput(f"max chip size must be at least 2 pixels, got {self.max_chip}")
        if self.grid is not None and self.grid not in GRIDS:
            raise InvalidInput(f"grid must be one of {GRIDS}, got {self.grid!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "RasterOptions":
        """Rebuild from ``asdict`` output (lists back to tuples), e.g. inside a Ray task."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SceneInfo":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@contextmanager
def gdal_env() -> Iterator[None]:
    """A ``rasterio.Env`` with :func:`rsclip.runtime.storage.gdal_options` and the AWS session applied."""
    import rasterio

    session = storage.gdal_session()
    kwargs = {"session": session} if session is not None else {}
    with rasterio.Env(**kwargs, **storage.gdal_options()):
        yield


def raster_path(uri: str) -> str:
    """The GDAL path (:func:`rsclip.runtime.storage.gdal_path`) of a local, ``file://``, ``s3://`` or
    ``http(s)://`` raster named by someone else.

    Raises :class:`UnsafeInput` for any other URI scheme (``zip://``, ``ftp://``...) and for local paths
    holding ``/vsi`` (GDAL reads such prefixes as protocols: curl, zip, memory...). Local paths are made
    absolute, so no GDAL ``DRIVER:`` prefix syntax can lead them.
    """
    text = str(uri)
    found = _SCHEME.match(text)
    scheme = found.group(1).lower() if found else ""
    if scheme not in RASTER_SCHEMES:
        raise UnsafeInput(f"{uri}: rasters are opened from local paths, s3:// and http(s):// URIs only, "
                          f"not {scheme}://")
    if storage.is_remote(text) or storage.is_http(text):
        return storage.gdal_path(text)
    path = os.path.abspath(storage.local_path(text))
    if "/vsi" in path.replace("\\", "/").lower():
        raise UnsafeInput(f"{uri}: GDAL virtual file system paths (/vsi...) are not opened")
    return path


def _open_error(exc: Exception, name: str, driver: str, path: str) -> Exception:
    """The rsclip error for a failed GDAL open of ``path`` (shown as ``name``): the whole store down, or this
    file not what it claims."""
    fault = faults.store_fault(exc, ignore=(name, path))  # a name quoted in the message is no evidence
    if fault is not None and fault.store_wide and not storage.is_http(name):  # an HTTP server is not the store
        return StoreUnavailable(f"{name}: {fault.advice}: {one_line(exc)}")
    reason = one_line(exc).replace(f"'{path}' ", "")
    return InvalidInput(f"{name}: not a readable raster (opened as {driver}: {reason})")


@contextmanager
def open_raster(uri: str) -> Iterator:
    """An open rasterio dataset of a local path or ``s3://`` raster, inside :func:`gdal_env`.

    Opened only with the driver its suffix claims (:func:`driver_for`), from :func:`raster_path`. Raises
    :class:`UnsafeInput` for other suffixes, schemes and ``/vsi`` paths, :class:`InvalidInput` naming
    ``uri`` when the file is not what it claims or cannot be read, ``LimitExceeded`` for tiles or strips over
    :func:`~.formats.check_raster_blocks`'s bound, ``StoreUnavailable`` when the store fails or refuses us.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    if stacked.is_stack(uri):  # each part opened as any raster, then read as one
        with ExitStack() as parts:
            stack = stacked.StackedRaster([parts.enter_context(open_raster(p)) for p in stacked.stack_parts(uri)])
            parts.callback(stack.close)
            yield stack  # read inside the parts' GDAL environments
        return
    driver = driver_for(uri)
    path = raster_path(uri)
    with gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = formats.open_checked(lambda **level: rasterio.open(path, driver=driver, **level), str(uri))
        except RasterioError as exc:
            raise _open_error(exc, str(uri), driver, path) from None
        with src:
            yield src


@contextmanager
def open_raster_bytes(data: bytes, name: str) -> Iterator:
    """An open rasterio dataset of raster bytes held in memory (an upload), opened as :func:`open_raster`."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    driver = driver_for(name)
    if not data:
        raise InvalidInput(f"{name}: empty file")
    with gdal_env(), warnings.catch_warnings(), MemoryFile(data) as memfile:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = formats.open_checked(lambda **level: memfile.open(driver=driver, **level), name)
        except RasterioError as exc:
            raise _open_error(exc, name, driver, memfile.name) from None
        with src:
            yield src


def choose_bands(count: int, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The 1-based bands to read from a ``count``-band raster. Raises ``InvalidInput`` when out of range."""
    if bands is None:
        return (1, 2, 3) if count >= 3 else (1,)
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InvalidInput(f"bands {bad} do not exist: the raster has {count} band(s)")
    return tuple(int(b) for b in bands)


def crs_string(crs) -> str | None:
    """A compact CRS text: ``EPSG:n`` when the CRS has an EPSG code, else WKT; None without a CRS."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def scene_percentiles(src, bands: Sequence[int], percentiles=DEFAULT_PERCENTILES) -> tuple[list[float], list[float]]:
    """Per-band ``(lo, hi)`` percentiles of valid pixels, from a decimated read (an overview on a COG).

    Raises ``InvalidInput`` when the scene holds no valid pixel (all nodata).
    """
    factor = max(1, math.ceil(max(src.width, src.height) / STATS_MAX_SIDE))
    shape = (len(bands), max(1, src.height // factor), max(1, src.width // factor))
    data = src.read(list(bands), out_shape=shape, masked=True)
    lo, hi = [], []
    for band in data:
        values = band.compressed() if np.ma.isMaskedArray(band) else band.ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise InvalidInput("all pixels are nodata")
        a, b = np.percentile(values, percentiles)
        lo.append(float(a))
        hi.append(float(b))
    return lo, hi


def describe_scene(src, options: RasterOptions) -> SceneInfo:
    """The :class:`SceneInfo` of an open rasterio dataset.

    Raises ``InvalidInput`` for unsupported data types (complex), bands out of range and scenes whose
    every pixel is nodata.
    """
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind not in SUPPORTED_KINDS:
        raise InvalidInput(f"unsupported data type {dtype.name}: bands must be integer or floating point")
    bands = choose_bands(src.count, options.bands)
    lo = hi = None
    if dtype != np.uint8:
        if options.scale is not None:
            lo, hi = [options.scale[0]] * len(bands), [options.scale[1]] * len(bands)
        else:
            lo, hi = scene_percentiles(src, bands)
    else:
        sides = (min(STATS_MAX_SIDE, max(2, max(src.width, src.height) // 8)), 8 * STATS_MAX_SIDE)  # bounded reads
        if not any(src.dataset_mask(out_shape=fit_shape(src.width, src.height, side)).any() for side in sides):
            raise InvalidInput("all pixels are nodata")
    return SceneInfo(
        width=src.width, height=src.height, count=src.count, dtype=dtype.name, bands=bands,
        scale_lo=tuple(lo) if lo is not None else None, scale_hi=tuple(hi) if hi is not None else None,
        crs=crs_string(src.crs),
    )


def window_bounds_wgs84(src, window: Sequence[int]) -> tuple[float, float, float, float] | None:
    """``(lon_min, lat_min, lon_max, lat_max)`` of ``window`` (densified reprojection of its bounds), or
    None when the raster has no CRS."""
    if src.crs is None:
        return None
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window as RioWindow, bounds

    x, y, w, h = window
    left, bottom, right, top = bounds(RioWindow(x, y, w, h), src.transform)
    return tuple(float(v) for v in transform_bounds(src.crs, "EPSG:4326", left, bottom, right, top))


def to_uint8(data: np.ndarray, lo: Sequence[float] | None, hi: Sequence[float] | None) -> np.ndarray:
    """``(bands, H, W)`` data as uint8, stretching band ``i`` linearly from ``[lo[i], hi[i]]`` to [0, 255].

    uint8 data with ``lo`` None passes unchanged; NaN becomes 0.
    """
    if lo is None or hi is None:
        if data.dtype != np.uint8:
            raise InvalidInput(f"{data.dtype} data needs a scale range")
        return data
    out = np.empty(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        span = hi[i] - lo[i] or 1.0
        scaled = (band.astype(np.float32) - np.float32(lo[i])) * np.float32(255.0 / span)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        out[i] = np.clip(scaled, 0.0, 255.0).round()
    return out


def valid_mask(data: np.ma.MaskedArray) -> np.ndarray:
    """``(bands, H, W)`` True where a pixel is nodata (value, alpha or internal mask) or not finite."""
    mask = np.ma.getmaskarray(data)
    values = np.ma.getdata(data)
    if np.issubdtype(values.dtype, np.floating):
        mask = mask | ~np.isfinite(values)
    return mask


def masked_to_rgb(data: np.ma.MaskedArray, scene: SceneInfo) -> np.ndarray:
    """Masked ``(bands, H, W)`` band data as RGB ``(H, W, 3)`` uint8: scaled as ``scene`` says, nodata
    black, one band repeated to grey."""
    mask = valid_mask(data)
    pixels = to_uint8(np.ma.getdata(data), scene.scale_lo, scene.scale_hi)
    if mask.any():
        pixels = np.where(mask, np.uint8(0), pixels)
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def read_window(src, window: Sequence[int], scene: SceneInfo, max_side: int | None = None) -> np.ndarray | None:
    """The RGB ``(h, w, 3)`` uint8 pixels of ``window``, or None when every pixel is nodata (:func:`read_tile`)."""
    return read_tile(src, window, scene, max_side)[0]


def read_tile(src, window: Sequence[int], scene: SceneInfo,
              max_side: int | None = None) -> tuple[np.ndarray | None, float]:
    """``(pixels, nodata_fraction)`` of ``window``: RGB ``(h, w, 3)`` uint8 (None when every pixel is nodata)
    and the share of its pixels that are nodata in any band read. With ``max_side``, a longer window is read
    decimated by GDAL (overviews when the file has them) to at most ``max_side`` pixels a side."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window as RioWindow

    x, y, w, h = window
    scaled = {}
    if max_side is not None and max(w, h) > max_side:
        scaled = {"out_shape": (len(scene.bands), *fit_shape(w, h, max_side)), "resampling": Resampling.bilinear}
    data = src.read(list(scene.bands), window=RioWindow(x, y, w, h), masked=True, **scaled)
    nodata = valid_mask(data)
    if nodata.all():
        return None, 1.0
    return masked_to_rgb(data, scene), float(nodata.any(axis=0).mean())


def read_scaled(src, scene: SceneInfo, shape: tuple[int, int], window: Sequence[int] | None = None) -> np.ndarray:
    """``window`` (default: the whole raster) resampled to ``shape`` = (height, width) as RGB uint8.

    GDAL decimates (overviews when the file has them), so only about ``shape`` pixels are read whatever
    the window's size; parts of the window outside the raster are black.
    """
    from rasterio.enums import Resampling
    from rasterio.windows import Window as RioWindow

    x, y, w, h = window if window is not None else (0, 0, src.width, src.height)
    data = src.read(list(scene.bands), window=RioWindow(x, y, w, h), out_shape=(len(scene.bands), *shape),
                    resampling=Resampling.bilinear, boundless=True, masked=True)
    return masked_to_rgb(data, scene)


def fit_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled down so the longest side is at most ``max_side`` (never scaled up)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def grid_origin(src) -> tuple[int, int] | None:
    """The ``(column, row)`` of the raster's first pixel from its CRS's origin, in its pixels (rounded): the
    grid's anchor; None without CRS or for rotated/sheared pixels (windows then start at the corner)."""
    a, b, c, d, e, f = tuple(src.transform)[:6]
    if src.crs is None or b or d or not a or not e:
        return None
    return round(c / a), round(f / e)


def plan_scene(src, options: RasterOptions, whole_scenes: bool = False) -> tuple[SceneInfo, list[Window]]:
    """The scene and its windows: the whole raster when it has no CRS (or ``whole_scenes``: a table cut so before)
    and no side exceeds ``options.max_chip``, else the ``tile_size``/``overlap`` grid anchored as ``options.grid``."""
    scene = describe_scene(src, options)
    if (scene.crs is None or whole_scenes) and max(scene.width, scene.height) <= options.max_chip:
        return scene, [Window(0, 0, scene.width, scene.height)]
    origin = grid_origin(src) if options.grid != GRID_SCENE else None
    return scene, grid_windows(scene.width, scene.height, options.tile_size, options.overlap, origin)
