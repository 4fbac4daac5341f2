"""Polygon filters: an area of interest in WGS84, given as GeoJSON, WKT or a shapely geometry.

:func:`parse_polygon` turns what a caller gives into a :class:`Region`: a valid Polygon or MultiPolygon
(holes allowed) whose longitudes lie in [-180, 180]. A polygon drawn across the antimeridian may be given
either as RFC 7946 asks (parts on both sides) or with longitudes running past +-180 (e.g. 170 to 190); the
latter is cut at the antimeridian and folded back (:func:`rsclip.geo.footprints.fold_longitudes`). A polygon
may reach a pole (latitude +-90).

A region filters in two steps, as ``bbox``/``near`` do: the boxes of its parts become an SQL prefilter on
the bound columns (:meth:`Region.boxes`; tiles whose bounds wrap across the antimeridian always pass it),
then each candidate's footprint (:func:`rsclip.table.rows.tile_footprints`: the stored WKB, or the box
of its bounds in older tables) must intersect the region exactly (touching counts, as for ``bbox``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from rsclip.geo import footprints
from rsclip.errors import InvalidInput, LimitExceeded

# Bounds on what a caller may hand in: text length, vertices, prefilter boxes (more parts share one box).
MAX_POLYGON_CHARS = 5_000_000
MAX_POLYGON_VERTICES = 200_000
MAX_PREFILTER_BOXES = 32
# Longitudes accepted before folding: one turn past the antimeridian on either side.
MAX_ABS_LON = 540.0
POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True, eq=False)
class Region:
    """A validated WGS84 Polygon/MultiPolygon (longitudes in [-180, 180]) and its prepared form."""

    geometry: object

    def __post_init__(self) -> None:
        import shapely

        shapely.prepare(self.geometry)

    def __eq__(self, other) -> bool:
        return isinstance(other, Region) and self.geometry.equals_exact(other.geometry, 0.0)

    def __hash__(self) -> int:
        return hash(self.geometry.wkb)

    @property
    def wkt(self) -> str:
        return self.geometry.wkt

    def boxes(self) -> list[tuple[float, float, float, float]]:
        """``(lon_min, lat_min, lon_max, lat_max)`` boxes covering the region: one per part, or one for
        the whole region when it has more than :data:`MAX_PREFILTER_BOXES` parts (parts on both sides of
        the antimeridian then keep one box per side)."""
        import shapely

        parts = list(shapely.get_parts(self.geometry))
        if len(parts) <= MAX_PREFILTER_BOXES:
            return [tuple(p.bounds) for p in parts]
        east = [p for p in parts if p.bounds[0] >= 0.0]
        west = [p for p in parts if p.bounds[0] < 0.0]
        return [tuple(shapely.MultiPolygon(side).bounds) for side in (west, east) if side]

    def intersects(self, geometries: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``geometries`` (shapely, None = unknown footprint) intersect the region."""
        import shapely

        if len(geometries) == 0:
            return np.zeros(0, dtype=bool)
        known = np.array([g is not None for g in geometries], dtype=bool)
        mask = np.zeros(len(geometries), dtype=bool)
        if known.any():
            mask[known] = shapely.intersects(self.geometry, np.asarray(geometries[known], dtype=object))
        return mask


def parse_polygon(value) -> Region:
    """A :class:`Region` from a GeoJSON geometry / Feature / FeatureCollection (dict or JSON text), WKT text
    or a shapely geometry, in WGS84 lon/lat.

    Raises ``InvalidInput`` for anything else: unparsable text, a geometry that is not a (Multi)Polygon,
    empty or invalid (self-intersecting, ...) polygons, latitudes outside [-90, 90]; ``LimitExceeded`` for
    text over :data:`MAX_POLYGON_CHARS` or more than :data:`MAX_POLYGON_VERTICES` vertices.
    """
    import shapely

    geometry = _geometry_of(value)
    if geometry.geom_type not in POLYGONAL:
        raise InvalidInput(f"polygon must be a Polygon or MultiPolygon, got a {geometry.geom_type}")
    if geometry.is_empty:
        raise InvalidInput("polygon is empty")
    coords = shapely.get_coordinates(geometry)
    if len(coords) > MAX_POLYGON_VERTICES:
        raise LimitExceeded(f"polygon has {len(coords):,} vertices, more than {MAX_POLYGON_VERTICES:,}")
    if not np.isfinite(coords).all():
        raise InvalidInput("polygon coordinates must be finite numbers")
    if np.abs(coords[:, 1]).max() > 90.0:
        raise InvalidInput(f"polygon latitude {coords[np.abs(coords[:, 1]).argmax(), 1]} is outside [-90, 90]: "
                           "coordinates must be WGS84 longitude, latitude (in that order)")
    if np.abs(coords[:, 0]).max() > MAX_ABS_LON:
        raise InvalidInput(f"polygon longitude {coords[np.abs(coords[:, 0]).argmax(), 0]} is outside "
                           f"[-{MAX_ABS_LON:g}, {MAX_ABS_LON:g}]")
    if not geometry.is_valid:
        raise InvalidInput(f"polygon is not valid: {shapely.is_valid_reason(geometry)}")
    if geometry.area == 0.0:
        raise InvalidInput("polygon has no area")
    return Region(footprints.fold_longitudes(geometry))


def _geometry_of(value):
    """The shapely geometry a caller's polygon value describes (not yet validated)."""
    from shapely.geometry.base import BaseGeometry

    if isinstance(value, Region):
        return value.geometry
    if isinstance(value, BaseGeometry):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        if len(value) > MAX_POLYGON_CHARS:
            raise LimitExceeded(f"polygon text is {len(value):,} characters long, more than {MAX_POLYGON_CHARS:,}")
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"polygon is not valid GeoJSON: {exc}") from None
        else:
            return _from_wkt(text)
    if isinstance(value, dict):
        return _from_geojson(value)
    raise InvalidInput(f"polygon must be GeoJSON, WKT or a shapely geometry, got {type(value).__name__}")


def _from_wkt(text: str):
    import shapely

    try:
        return shapely.from_wkt(text)
    except (shapely.errors.ShapelyError, ValueError, TypeError) as exc:
        raise InvalidInput(f"polygon is not valid WKT: {str(exc).splitlines()[0][:200]}") from None


def _from_geojson(obj: dict):
    """A geometry from a GeoJSON geometry, Feature or FeatureCollection (its features' union)."""
    import shapely
    from shapely.geometry import shape

    kind = obj.get("type")
    if kind == "Feature":
        if not isinstance(obj.get("geometry"), dict):
            raise InvalidInput("polygon GeoJSON Feature has no geometry")
        return _from_geojson(obj["geometry"])
    if kind == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, list) or not features:
            raise InvalidInput("polygon GeoJSON FeatureCollection has no features")
        parts = [_from_geojson(f) for f in features if isinstance(f, dict)]
        if not parts:
            raise InvalidInput("polygon GeoJSON FeatureCollection has no feature objects")
        return shapely.union_all(parts) if len(parts) > 1 else parts[0]
    try:
        return shape(obj)
    except (shapely.errors.ShapelyError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise InvalidInput(f"polygon is not a valid GeoJSON geometry ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else kind})") from None
