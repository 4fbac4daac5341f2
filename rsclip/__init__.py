"""rsclip: text and image search over satellite archives with CLIP.

The flat public API: load a model, write and open tile tables, query them.
"""

from rsclip.model import DEFAULT_MODEL, ClipEncoder, load_model
from rsclip.index import build_index
from rsclip.locate import locate, render_heatmap
from rsclip.query import query
from rsclip.zeroshot import classify
from rsclip.store import DEFAULT_TABLE, METRIC, add_tiles, connect, create_table, open_table, tile_id

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TABLE",
    "METRIC",
    "ClipEncoder",
    "add_tiles",
    "build_index",
    "classify",
    "connect",
    "create_table",
    "load_model",
    "locate",
    "open_table",
    "query",
    "render_heatmap",
    "tile_id",
]
