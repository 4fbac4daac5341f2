"""Tile footprints: the true WGS84 outline of a pixel window of a georeferenced raster.

A window of a projected scene is not an axis-aligned lon/lat box: its edges are straight in the native CRS
and curve (and rotate) in WGS84. :func:`window_footprint` walks the window's edges in source pixels, maps the
points through the raster's affine transform into the native CRS and through pyproj into lon/lat, and builds
a shapely polygon of them.

- **Densified, reproducibly.** Edge points sit at the window's corners and at every multiple of
  :data:`DENSIFY_PIXELS` source pixels (absolute positions), so two neighbouring windows of one scene get
  identical points along the edge they share and a union of their footprints has no sliver. An edge whose
  points all lie within :data:`STRAIGHT_TOLERANCE_PIXELS` of a pixel of the chord between its corners keeps
  only the corners (a 224 px tile of a UTM scene is four points: the footprint is exact to a quarter
  pixel); curved edges (large windows, polar projections) keep every point.
- **Antimeridian and poles.** Longitudes are unwrapped along the ring; a ring that winds once around a pole
  is closed along that pole's latitude; the result is cut at +-180 degrees into a MultiPolygon whose parts
  lie in [-180, 180] (RFC 7946, section 3.1.9). :func:`fold_longitudes` does the cut for any geometry.
- Exterior rings are counter-clockwise, holes clockwise (RFC 7946).

Footprints are stored in the tile table as WKB (:data:`rsclip.table.tiles.FOOTPRINT`), computed by the
embedding job where it opens each scene; tables written before the column existed fall back to the box of
their bound columns (:func:`box_footprint`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from rsclip.errors import InvalidInput

# Edge points at every multiple of this many source pixels (plus the corners).
DENSIFY_PIXELS = 64
# An edge whose points lie within this fraction of a pixel of its chord keeps its two corners only.
STRAIGHT_TOLERANCE_PIXELS = 0.25
WGS84 = "EPSG:4326"
# The span (degrees of unwrapped longitude) above which a closed ring is taken to wind around a pole.
POLE_WINDING_DEG = 180.0


@functools.lru_cache(maxsize=64)
def _transformer(crs_text: str):
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_user_input(crs_text), WGS84, always_xy=True)


def crs_text(crs) -> str:
    """A text pyproj accepts for ``crs`` (a rasterio ``CRS``, a pyproj ``CRS`` or a string)."""
    if isinstance(crs, str):
        return crs
    to_wkt = getattr(crs, "to_wkt", None)
    if to_wkt is None:
        raise InvalidInput(f"not a coordinate reference system: {crs!r}")
    return to_wkt()


def edge_positions(start: int, stop: int, step: int = DENSIFY_PIXELS) -> np.ndarray:
    """Pixel positions along one axis from ``start`` to ``stop`` (both included): the ends and every
    multiple of ``step`` strictly between them, in the direction of travel."""
    lo, hi = min(start, stop), max(start, stop)
    inner = np.arange((lo // step + 1) * step, hi, step)
    points = np.concatenate([[lo], inner[inner < hi], [hi]]).astype(np.float64)
    return points if start <= stop else points[::-1]


def window_edges(window: Sequence[int], step: int = DENSIFY_PIXELS) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four edges of ``(x, y, width, height)`` as ``(cols, rows)`` pixel-corner arrays, each from one
    corner to the next: top (left to right), right (down), bottom (right to left), left (up)."""
    x, y, w, h = (int(v) for v in window)
    if w < 1 or h < 1:
        raise InvalidInput(f"window must have a positive size, got {w}x{h}")
    x1, y1 = x + w, y + h
    top, right = edge_positions(x, x1, step), edge_positions(y, y1, step)
    bottom, left = edge_positions(x1, x, step), edge_positions(y1, y, step)
    return [(top, np.full(len(top), float(y))), (np.full(len(right), float(x1)), right),
            (bottom, np.full(len(bottom), float(y1))), (np.full(len(left), float(x)), left)]


def _straight(lon: np.ndarray, lat: np.ndarray, pixels: float) -> bool:
    """Whether every point of an edge ``pixels`` long lies within :data:`STRAIGHT_TOLERANCE_PIXELS` of a pixel
    (its mean size in degrees along the edge) of the chord between its ends. Symmetric in the direction of
    travel, so the two windows sharing an edge decide alike."""
    if len(lon) <= 2:
        return True
    dx, dy = lon[-1] - lon[0], lat[-1] - lat[0]
    length = float(np.hypot(dx, dy))
    if length == 0.0:
        return False
    deviation = np.abs(dx * (lat - lat[0]) - dy * (lon - lon[0])) / length
    return bool(deviation.max() <= STRAIGHT_TOLERANCE_PIXELS * length / pixels)


def window_footprint(transform: Sequence[float], crs, window: Sequence[int], *, step: int = DENSIFY_PIXELS):
    """The WGS84 footprint of pixel ``window`` of a raster.

    Args:
        transform: the raster's affine transform: a rasterio ``Affine`` or its six coefficients
            ``a, b, c, d, e, f`` (``x = a*col + b*row + c``, ``y = d*col + e*row + f``).
        crs: the raster's native CRS.
        window: the pixel window ``(x, y, width, height)``.
        step: edge points are taken at the corners and at every multiple of ``step`` source pixels.

    Returns:
        A shapely Polygon or MultiPolygon.

    Raises:
        InvalidInput: the window's points have no WGS84 position (outside the projection's domain), the
            window has no positive size, or ``crs`` is not a coordinate reference system.
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    to_wgs84 = _transformer(crs_text(crs))
    lons, lats = [], []
    for cols, rows in window_edges(window, step):
        lon, lat = to_wgs84.transform(a * cols + b * rows + c, d * cols + e * rows + f)
        lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            raise InvalidInput(f"window {tuple(window)} has points outside the domain of its CRS")
        if _straight(lon, lat, float(abs(cols[-1] - cols[0]) + abs(rows[-1] - rows[0]))):
            lon, lat = lon[[0, -1]], lat[[0, -1]]
        lons.append(lon[:-1])  # the last point is the next edge's first
        lats.append(lat[:-1])
    return ring_polygon(np.concatenate(lons), np.concatenate(lats))


def ring_polygon(lon: np.ndarray, lat: np.ndarray):
    """The WGS84 polygon of a ring of lon/lat points (not closed, in order), unwrapped across the antimeridian,
    closed along the pole it winds around (if any) and cut into [-180, 180]; oriented as RFC 7946 asks."""
    import shapely
    from shapely.geometry import Polygon

    unwrapped = np.degrees(np.unwrap(np.radians(np.append(lon, lon[0]))))
    lat = np.append(lat, lat[0])
    winding = unwrapped[-1] - unwrapped[0]
    if abs(winding) > POLE_WINDING_DEG:  # the ring goes once around a pole: close it along the pole
        pole = 90.0 if float(np.mean(lat)) > 0 else -90.0
        points = list(zip(unwrapped, lat)) + [(unwrapped[-1], pole), (unwrapped[0], pole)]
    else:
        points = list(zip(unwrapped[:-1], lat[:-1]))
    polygon = Polygon(points)
    if not polygon.is_valid:
        polygon = shapely.make_valid(polygon)
    return shapely.orient_polygons(fold_longitudes(polygon))


def fold_longitudes(geometry):
    """``geometry`` (lon/lat, longitudes possibly beyond +-180) cut at the antimeridian with each piece moved
    into [-180, 180]; polygonal pieces only. Returned unchanged when it already lies within [-180, 180]."""
    import shapely
    from shapely import affinity
    from shapely.geometry import box

    min_lon, _, max_lon, _ = geometry.bounds
    if min_lon >= -180.0 and max_lon <= 180.0:
        return geometry
    world = box(-180.0, -90.0, 180.0, 90.0)
    first, last = int(np.floor((min_lon + 180.0) / 360.0)), int(np.floor((max_lon + 180.0) / 360.0))
    pieces = []
    for turn in range(first, last + 1):
        part = affinity.translate(geometry, xoff=-360.0 * turn).intersection(world)
        pieces += [p for p in shapely.get_parts(part) if p.geom_type == "Polygon" and p.area > 0]
    if not pieces:
        raise InvalidInput("geometry has no area inside longitudes [-180, 180]")
    return pieces[0] if len(pieces) == 1 else shapely.MultiPolygon(pieces)


def box_footprint(lon_min: float, lat_min: float, lon_max: float, lat_max: float):
    """The footprint of a tile known only by its bound columns: their box (two boxes when the bounds wrap
    across the antimeridian, ``lon_min > lon_max``); None when the bounds are missing."""
    from shapely.geometry import box

    values = (lon_min, lat_min, lon_max, lat_max)
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    if lon_min > lon_max:
        return fold_longitudes(box(lon_min, lat_min, lon_max + 360.0, lat_max))
    return box(lon_min, lat_min, lon_max, lat_max, ccw=True)


def raster_footprint_wkb(src, window: Sequence[int]) -> bytes | None:
    """WKB of the footprint of ``window`` of the open rasterio dataset ``src``; None without a CRS or when the
    window leaves its CRS's domain (the tile then keeps the box of its bounds, as older tables do)."""
    if src.crs is None:
        return None
    try:
        return window_footprint(src.transform, src.crs, window).wkb
    except InvalidInput:
        return None
