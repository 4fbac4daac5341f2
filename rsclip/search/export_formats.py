"""The formats :mod:`rsclip.search.export` writes and the file suffixes that name them (constants only, so that
the command line offers them without loading the libraries that write them)."""

FORMATS = ("geojson", "geoparquet", "csv")
SUFFIXES = {".geojson": "geojson", ".json": "geojson", ".parquet": "geoparquet", ".geoparquet": "geoparquet",
            ".csv": "csv"}
