"""Great-circle geometry for ``near=`` queries: point-to-box distance and a conservative SQL prefilter.

Tile bounds are WGS84 boxes ``lon_min <= lon_max`` (a box never wraps across the antimeridian). Distances
are on a sphere of the mean Earth radius and are wrap-aware: a point at lon 179.9 is 22 km from a tile at
lon -179.9 on the equator. The SQL prefilter selects tiles intersecting the bounding box of the spherical
cap of the radius (split in two across the antimeridian, all longitudes when the cap holds a pole); the
exact distance then decides. :func:`finite_numbers` is the number check the coordinate arguments of every
search share (``bbox``, ``near``, a timeline's place).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from rsclip.table import tiles
from rsclip.errors import InvalidInput

EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius
# Widening of the prefilter box (degrees) so that float rounding never drops a tile at the exact radius.
PREFILTER_MARGIN_DEG = 1e-7

Near = tuple[float, float, float]


def finite_numbers(values, count: int, what: str, names: str) -> tuple[float, ...]:
    """``count`` finite floats from ``values``; raises ``InvalidInput`` naming ``what`` and ``names`` otherwise."""
    words = {2: "two", 3: "three", 4: "four"}.get(count, str(count))
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be {words} numbers ({names}), got {values!r}") from None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise InvalidInput(f"{what} must be {words} finite numbers ({names}), got {values!r}")
    return numbers


def validate_near(near: Sequence[float]) -> Near:
    """``near`` as ``(lon, lat, radius_km)`` floats.

    Raises ``InvalidInput`` unless it has three finite numbers, lon in [-180, 180], lat in [-90, 90] and a
    radius >= 0 (0 keeps tiles containing the point).
    """
    values = finite_numbers(near, 3, "near", "lon, lat, radius_km")
    lon, lat, radius = values
    if not -180.0 <= lon <= 180.0:
        raise InvalidInput(f"near longitude {lon} is outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise InvalidInput(f"near latitude {lat} is outside [-90, 90]")
    if radius < 0:
        raise InvalidInput(f"near radius must be >= 0 km, got {radius}")
    return values


def _wrapped_lon_gap(lon: float, lon_min: np.ndarray, lon_max: np.ndarray) -> np.ndarray:
    """Smallest longitude difference (degrees, 0..180) from ``lon`` to the intervals [lon_min, lon_max]."""
    inside = (lon_min <= lon) & (lon <= lon_max)
    to_min = np.abs((lon_min - lon + 180.0) % 360.0 - 180.0)
    to_max = np.abs((lon_max - lon + 180.0) % 360.0 - 180.0)
    return np.where(inside, 0.0, np.minimum(to_min, to_max))


def box_distance_km(lon: float, lat: float, lon_min, lat_min, lon_max, lat_max) -> np.ndarray:
    """Great-circle distance (km) from the point ``(lon, lat)`` to each box; 0 when the box contains it.

    Exact on the sphere: for any latitude the nearest longitude of a box is the one closest to ``lon``
    (independent of the latitude), which leaves a one-dimensional search along that meridian. NaN bounds
    give NaN.
    """
    lon_min, lat_min, lon_max, lat_max = (np.asarray(a, dtype=np.float64) for a in (lon_min, lat_min, lon_max, lat_max))
    dlon = np.radians(_wrapped_lon_gap(lon, lon_min, lon_max))
    phi_p = math.radians(lat)
    # Along that meridian cos(d) = R cos(phi - alpha), alpha = atan2(b, a): unimodal on the circle, so its
    # maximum over [lat_min, lat_max] is at alpha when inside, else at one of the two ends (which one depends
    # on the way round the circle, over a pole or not): take the best of the three candidates.
    alpha = np.arctan2(math.sin(phi_p), math.cos(phi_p) * np.cos(dlon))
    lo, hi = np.radians(lat_min), np.radians(lat_max)
    hav = np.minimum.reduce([_haversine(phi, phi_p, dlon) for phi in (np.clip(alpha, lo, hi), lo, hi)])
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0)))


def _haversine(phi: np.ndarray, phi_p: float, dlon: np.ndarray) -> np.ndarray:
    """hav(d) between latitude ``phi`` and ``phi_p`` (radians) ``dlon`` radians apart in longitude."""
    return np.sin((phi - phi_p) / 2.0) ** 2 + math.cos(phi_p) * np.cos(phi) * np.sin(dlon / 2.0) ** 2


def near_filter(near: Near) -> str | None:
    """SQL keeping every tile that can lie within the radius (a superset); None when no box can be cut."""
    lon, lat, radius = near
    ang = math.degrees(radius / EARTH_RADIUS_KM) + PREFILTER_MARGIN_DEG
    if ang >= 180.0:
        return None
    lat_lo, lat_hi = lat - ang, lat + ang
    lat_sql = f"{tiles.LAT_MAX} >= {lat_lo!r} AND {tiles.LAT_MIN} <= {lat_hi!r}"
    s = math.sin(math.radians(min(ang, 90.0)))
    c = math.cos(math.radians(lat))
    if lat_hi >= 90.0 or lat_lo <= -90.0 or s >= c:
        # The cap holds a pole: every longitude is within reach.
        return f"({lat_sql} AND {tiles.LON_MIN} IS NOT NULL)"
    half = math.degrees(math.asin(s / c)) + PREFILTER_MARGIN_DEG
    lo, hi = lon - half, lon + half
    spans = [(max(lo, -180.0), min(hi, 180.0))]
    if lo < -180.0:
        spans.append((lo + 360.0, 180.0))
    if hi > 180.0:
        spans.append((-180.0, hi - 360.0))
    lon_sql = " OR ".join(f"({tiles.LON_MIN} <= {b!r} AND {tiles.LON_MAX} >= {a!r})" for a, b in spans)
    return f"({lat_sql} AND ({lon_sql}))"


def within(near: Near, frame) -> np.ndarray:
    """Boolean mask of the rows of ``frame`` (bounds columns) within ``near``'s radius; null bounds: False."""
    lon, lat, radius = near
    dist = box_distance_km(lon, lat, *(frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in tiles.BOUNDS_COLUMNS))
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(dist, nan=np.inf) <= radius
