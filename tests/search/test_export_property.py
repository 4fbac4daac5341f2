"""Exports round-trip through the readers a GIS uses, whatever the table holds (hypothesis): any text (quotes,
commas, line breaks, control characters, formula starts, any script), unknown values, tiles with and without
footprints. GeoJSON is read back by GDAL/OGR (pyogrio), GeoParquet by geopandas, CSV by Python's csv module
(RFC 4180); each must give back every feature with its values (CSV: text cells a spreadsheet would run carry
one leading quote, :func:`rsclip.search.export.csv_bytes`) and its footprint."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pyogrio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsclip.search import export as ex
from rsclip.table import tiles

EXAMPLES = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEXT_COLUMNS = (tiles.ID, tiles.URI, tiles.CRS, tiles.ITEM_ID)
# Text a table may hold: any Unicode scalar value but NUL (UTF-8 in Arrow strings; surrogates are not characters)
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


@st.composite
def result_rows(draw):
    """A frame of search results: text of every kind, unknown values, some tiles without a footprint."""
    n = draw(st.integers(1, 8))
    cell = lambda strategy: draw(st.lists(strategy, min_size=n, max_size=n))  # noqa: E731
    lon = np.array(cell(st.floats(-179.0, 178.0)))
    lat = np.array(cell(st.floats(-89.0, 88.0)))
    size = np.array(cell(st.floats(0.001, 1.0)))
    located = np.array(cell(st.booleans()))
    nan = lambda values: np.where(located, values, np.nan)  # noqa: E731
    when = cell(st.one_of(st.none(), st.datetimes(min_value=pd.Timestamp("1970-01-01").to_pydatetime(),
                                                  max_value=pd.Timestamp("2100-01-01").to_pydatetime())))
    optional = lambda strategy: cell(st.one_of(st.none(), strategy))  # noqa: E731
    return pd.DataFrame({
        tiles.ID: cell(texts.filter(bool)), tiles.URI: cell(texts), "x": cell(st.integers(0, 10**6)),
        "y": cell(st.integers(0, 10**6)), "width": cell(st.integers(1, 4096)), "height": cell(st.integers(1, 4096)),
        "score": cell(st.floats(-1.0, 1.0)), "lon_min": nan(lon), "lat_min": nan(lat), "lon_max": nan(lon + size),
        "lat_max": nan(lat + size), tiles.CRS: optional(texts), tiles.ITEM_ID: optional(texts),
        tiles.DATETIME: pd.to_datetime(when, utc=True),
        tiles.CLOUD_COVER: optional(st.floats(0.0, 100.0)), tiles.NODATA_FRACTION: optional(st.floats(0.0, 1.0)),
    })


def expected(frame: pd.DataFrame):
    """The features' properties as text or None, and their footprints (the box of the bounds, or None)."""
    gdf = ex.features(frame)
    geometry = [None if not np.isfinite(r.lon_min) else shapely.box(r.lon_min, r.lat_min, r.lon_max, r.lat_max)
                for r in frame.itertuples()]
    return gdf, geometry


def written(frame: pd.DataFrame, folder, name: str):
    """``frame``'s features (:func:`expected`) written to ``folder/name``: ``(features, footprints, path)``."""
    gdf, geometry = expected(frame)
    ex.write_features(gdf, str(folder / name))
    return gdf, geometry, folder / name


def same_geometry(got, want) -> bool:
    if want is None:
        return got is None or got.is_empty
    return got is not None and shapely.equals_exact(got.normalize(), want.normalize(), tolerance=1e-9)


def text_or_none(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


@EXAMPLES
@given(frame=result_rows())
def test_geojson_read_by_gdal_gives_back_every_feature(frame, tmp_path):
    gdf, geometry, path = written(frame, tmp_path, "out.geojson")
    back = pyogrio.read_dataframe(path)
    assert len(back) == len(frame)
    for column in (*TEXT_COLUMNS, ex.WINDOW):
        assert [text_or_none(v) for v in back[column]] == [text_or_none(v) for v in gdf[column]], column
    # OGR reads the ISO 8601 text as its DateTime type, which keeps milliseconds
    got, want = pd.to_datetime(back[ex.DATETIME], utc=True), pd.to_datetime(gdf[ex.DATETIME], utc=True)
    assert (got.isna() == want.isna()).all()
    assert ((got - want).abs()[want.notna()] < pd.Timedelta(milliseconds=1)).all()
    for column in ("score", tiles.CLOUD_COVER, tiles.NODATA_FRACTION):
        np.testing.assert_array_equal(back[column].to_numpy(dtype=float), gdf[column].to_numpy(dtype=float))
    assert all(same_geometry(g, w) for g, w in zip(back.geometry, geometry))


@EXAMPLES
@given(frame=result_rows())
def test_geoparquet_read_by_geopandas_gives_back_every_feature(frame, tmp_path):
    import geopandas as gpd

    gdf, geometry, path = written(frame, tmp_path, "out.parquet")
    back = gpd.read_parquet(path)
    assert back.crs == gdf.crs and len(back) == len(frame)
    pd.testing.assert_frame_equal(pd.DataFrame(back.drop(columns="geometry")),
                                  pd.DataFrame(gdf.drop(columns="geometry")))
    assert all(same_geometry(g, w) for g, w in zip(back.geometry, geometry))


@EXAMPLES
@given(frame=result_rows())
def test_csv_read_by_the_csv_module_gives_back_every_feature_with_formulas_quoted(frame, tmp_path):
    gdf, geometry, path = written(frame, tmp_path, "out.csv")
    back = list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))
    assert len(back) == len(frame)
    for column in (*TEXT_COLUMNS, ex.WINDOW, ex.DATETIME):
        for got, want in zip((row[column] for row in back), gdf[column]):
            want = text_or_none(want) or ""
            assert got == ("'" + want if want.startswith(ex.FORMULA_STARTS) else want), column
    for column in ("score", tiles.CLOUD_COVER, tiles.NODATA_FRACTION):
        got = [float(row[column]) if row[column] else np.nan for row in back]
        np.testing.assert_array_equal(got, gdf[column].to_numpy(dtype=float))
    wkt = [shapely.from_wkt(row[ex.WKT]) if row[ex.WKT] else None for row in back]
    assert all(same_geometry(g, w) for g, w in zip(wkt, geometry))

