"""The names of the tile table: its default table name and its column names (constants only, importing
nothing, so that the command line reads them without loading Arrow or NumPy). :mod:`rsclip.table.tiles`
describes the columns and is where the rest of the library takes them from."""

DEFAULT_TABLE = "tiles"

ID, URI, X, Y, WIDTH, HEIGHT = "id", "uri", "x", "y", "width", "height"
LON_MIN, LAT_MIN, LON_MAX, LAT_MAX, CRS, VECTOR = "lon_min", "lat_min", "lon_max", "lat_max", "crs", "vector"
SOURCE_VERSION = "source_version"
FOOTPRINT = "footprint"  # WKB polygon in WGS84; tables written before it lack the column
# When and how well a tile was seen (tables written before them lack these columns: read as all null).
DATETIME, ITEM_ID, CLOUD_COVER, NODATA_FRACTION = "datetime", "item_id", "cloud_cover", "nodata_fraction"
