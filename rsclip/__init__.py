"""rsclip: text and image search over satellite archives with CLIP.

The flat public API: load a model, write and open tile tables, query them.
"""

from rsclip.model import DEFAULT_MODEL, ClipEncoder, load_model
from rsclip.query import query
from rsclip.store import DEFAULT_TABLE, METRIC, add_tiles, connect, create_table, open_table, tile_id

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TABLE",
    "METRIC",
    "ClipEncoder",
    "add_tiles",
    "connect",
    "create_table",
    "load_model",
    "open_table",
    "query",
    "tile_id",
]
