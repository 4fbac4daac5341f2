"""Real STAC setups, offline, over the real GeoTIFFs of ``../shared/data`` (written with pystac).

What the items are, honestly:

- ``naip-2009``, ``naip-2020``: the NAIP clips m_4709963_se_14_1 of 2009-08-18 and 2020-08-31, genuinely the
  same place in two years (their pixel grids differ by 1 m, a fifth of a pixel); cloud cover 0.
- ``landsat-a``: the Landsat clip RGB.byte.tif as it is, dated 2021-03-01 with 5 % cloud cover here (the
  date and cloud cover are made up; the pixels are real).
- ``landsat-b``: the same clip band-stretched (gamma 0.6), dated 2021-06-01, 40 % cloud: "another date" of
  the same place built from the same pixels, so its embedding moved a little.
- ``landsat-bands``: the same clip split into three single-band GeoTIFFs ``red``, ``green`` (300 m pixels,
  as the original) and ``blue`` (decimated to 600 m pixels), dated 2021-09-01, 10 % cloud, without a
  ``visual`` asset.

Every other item has one ``visual`` asset (the clip itself).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np

from tests.helpers import BUCKET, GEOTIFF_DIR

NAIP_2009, NAIP_2020 = "m_4709963_se_14_1_20090818.tif", "m_4709963_se_14_1_20200831.tif"
LANDSAT = "RGB.byte.tif"
UTC = dt.timezone.utc
# item id: (collection, datetime, cloud cover)
ITEMS = {
    "naip-2009": ("naip", dt.datetime(2009, 8, 18, 17, 0, tzinfo=UTC), 0.0),
    "naip-2020": ("naip", dt.datetime(2020, 8, 31, 17, 0, tzinfo=UTC), 0.0),
    "landsat-a": ("landsat", dt.datetime(2021, 3, 1, 15, 30, tzinfo=UTC), 5.0),
    "landsat-b": ("landsat", dt.datetime(2021, 6, 1, 15, 30, tzinfo=UTC), 40.0),
    "landsat-bands": ("landsat", dt.datetime(2021, 9, 1, 15, 30, tzinfo=UTC), 10.0),
}


def _write(path: Path, data: np.ndarray, profile: dict, **changes) -> Path:
    import rasterio

    profile = {**profile, "count": data.shape[0], "driver": "GTiff", **changes}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def build_scenes(folder: Path) -> dict[str, dict[str, Path]]:
    """The assets of :data:`ITEMS` as GeoTIFFs under ``folder``: ``{item id: {asset key: path}}``."""
    import rasterio
    from rasterio.enums import Resampling

    folder.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for item, name in (("naip-2009", NAIP_2009), ("naip-2020", NAIP_2020), ("landsat-a", LANDSAT)):
        scenes[item] = {"visual": Path(shutil.copy(GEOTIFF_DIR / name, folder / f"{item}.tif"))}
    with rasterio.open(GEOTIFF_DIR / LANDSAT) as src:
        data, profile = src.read(), src.profile
        stretched = np.where(data > 0, np.clip(255.0 * (data / 255.0) ** 0.6, 1, 255), 0).astype(np.uint8)
        scenes["landsat-b"] = {"visual": _write(folder / "landsat-b.tif", stretched, profile)}
        blue = src.read(3, out_shape=(src.height // 2, src.width // 2), resampling=Resampling.average)
        half = src.transform * src.transform.scale(src.width / blue.shape[1], src.height / blue.shape[0])
        scenes["landsat-bands"] = {
            "red": _write(folder / "landsat-bands-red.tif", data[0:1], profile),
            "green": _write(folder / "landsat-bands-green.tif", data[1:2], profile),
            "blue": _write(folder / "landsat-bands-blue.tif", blue[None], profile, width=blue.shape[1],
                           height=blue.shape[0], transform=half),
        }
    return scenes


def build_items(scenes: dict[str, dict[str, Path]], href=lambda path: str(path)) -> list:
    """pystac Items of :data:`ITEMS` for ``scenes``, their asset hrefs ``href(path)``."""
    import pystac
    import rasterio
    from rasterio.warp import transform_bounds
    from shapely.geometry import box, mapping

    items = []
    for item_id, assets in scenes.items():
        collection, when, cloud = ITEMS[item_id]
        with rasterio.open(next(iter(assets.values()))) as src:
            bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        item = pystac.Item(item_id, mapping(box(*bounds)), list(bounds), when,
                           {"eo:cloud_cover": cloud, "platform": collection}, collection=collection)
        for key, path in assets.items():
            item.add_asset(key, pystac.Asset(href(path), media_type=pystac.MediaType.GEOTIFF, roles=["data"]))
        items.append(item)
    return items


def write_catalog(folder: Path, scenes: dict[str, dict[str, Path]]) -> Path:
    """A self-contained static catalog at ``folder`` (catalog -> collections -> items, each item's assets
    beside its JSON, relative hrefs); returns the catalog.json path."""
    import pystac

    catalog = pystac.Catalog("rsclip-test", "Real GeoTIFFs of ../shared/data as STAC items (tests/helpers/stac.py)")
    collections = {}
    for item in build_items(scenes):
        name = item.collection_id
        if name not in collections:
            collections[name] = pystac.Collection(name, f"{name} test scenes", pystac.Extent(
                pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]])))
            catalog.add_child(collections[name])
        collections[name].add_item(item)
    catalog.normalize_hrefs(str(folder))
    for item in catalog.get_items(recursive=True):
        home = Path(item.get_self_href()).parent
        home.mkdir(parents=True, exist_ok=True)
        for asset in item.assets.values():
            asset.href = str(Path(shutil.copy(asset.href, home / Path(asset.href).name)))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


def upload_tree(s3, folder: Path, prefix: str) -> str:
    """Upload every file under ``folder`` to ``s3://BUCKET/<prefix>/`` (same layout); returns that URI."""
    client = s3.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def write_item_collection(path: Path, items) -> Path:
    """The items as an ItemCollection (a saved search answer) at ``path``."""
    import pystac

    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path


def embed_sources(db, model: Path, sources, options) -> list[dict]:
    """A tile table at ``db`` of the listed STAC ``sources`` embedded as the job does (planning, window reads
    with their nodata share, the writer's conversion), without Ray; returns the rows written."""
    from rsclip.geo import raster
    from rsclip.table import tiles
    from rsclip.model.clip import load_model
    from rsclip.ingest import batch as B, planning, write_stage

    rows, images = [], []
    for source in sources:
        if source.problem:
            continue
        planned = planning.plan_file(source.uri, source.size, options, source.version, source)
        with raster.open_raster(source.uri) as src:
            scene = raster.describe_scene(src, options)
            for row in planned:
                pixels, row[tiles.NODATA_FRACTION] = raster.read_tile(src, [row[c] for c in tiles.WINDOW_COLUMNS],
                                                                      scene)
                if pixels is not None:
                    rows.append(row)
                    images.append(pixels)
    encoder = load_model(model)
    columns = B.rows_to_batch(rows, B.PLAN_COLUMNS)
    columns[tiles.VECTOR] = encoder.encode_images(images)
    table = tiles.create_table(db, model=str(model), dim=encoder.dim)
    tiles.add_tiles(table, write_stage.tiles_table(columns, np.arange(len(rows)), table.schema))
    return rows
