"""rsclip: text and image search over satellite archives with CLIP.

The flat public API: load a model, write and open tile tables, query them. The package is organised in
rooms (README, Development), each importing only the rooms below it: ``rsclip.app`` (command line and web
app); ``rsclip.search`` (queries), ``rsclip.ingest`` (the embedding job), ``rsclip.train`` (fine-tuning) and
``rsclip.detect`` (the detection job), which never import each other; ``rsclip.table`` (the tile table and
the tables beside it: index, labels, detections); ``rsclip.model`` (loading, identity and conversion of CLIP
models); ``rsclip.geo`` (rasters, windows, images, footprints, dates); ``rsclip.runtime`` (storage, Ray
clusters, watchdog, flags); and ``rsclip.errors`` (the error types).

Names are imported on first use (a module ``__getattr__``), so that a process needing one module (a Ray task
that decodes tiles imports ``rsclip.ingest.reading``) does not pay for torch, transformers and LanceDB at
start-up. Type checkers and IDEs read the same names from the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rsclip.geo.footprints import window_footprint
    from rsclip.model.clip import ClipEncoder, load_model
    from rsclip.model.sources import DEFAULT_MODEL, convert_model
    from rsclip.search.examples import query_examples
    from rsclip.search.export import export, export_frame, export_labels
    from rsclip.search.info import table_info
    from rsclip.search.locate import locate, render_heatmap
    from rsclip.search.query import query, query_text, similar_tiles
    from rsclip.search.review import review_detections
    from rsclip.search.timeline import changes, timeline
    from rsclip.search.zeroshot import classify
    from rsclip.table.index import build_index
    from rsclip.table.labels import add_labels, label_sets, read_labels, remove_labels
    from rsclip.table.tiles import (DEFAULT_TABLE, METRIC, add_tiles, connect, create_table, open_table, tile_id,
                                    upgrade_table)

_EXPORTS = {
    "DEFAULT_MODEL": "rsclip.model.sources",
    "ClipEncoder": "rsclip.model.clip",
    "load_model": "rsclip.model.clip",
    "convert_model": "rsclip.model.sources",
    "build_index": "rsclip.table.index",
    "DEFAULT_TABLE": "rsclip.table.tiles",
    "METRIC": "rsclip.table.tiles",
    "add_tiles": "rsclip.table.tiles",
    "connect": "rsclip.table.tiles",
    "create_table": "rsclip.table.tiles",
    "open_table": "rsclip.table.tiles",
    "tile_id": "rsclip.table.tiles",
    "query": "rsclip.search.query",
    "query_text": "rsclip.search.query",
    "similar_tiles": "rsclip.search.query",
    "locate": "rsclip.search.locate",
    "render_heatmap": "rsclip.search.locate",
    "classify": "rsclip.search.zeroshot",
    "table_info": "rsclip.search.info",
    "query_examples": "rsclip.search.examples",
    "add_labels": "rsclip.table.labels",
    "remove_labels": "rsclip.table.labels",
    "read_labels": "rsclip.table.labels",
    "label_sets": "rsclip.table.labels",
    "review_detections": "rsclip.search.review",
    "export": "rsclip.search.export",
    "export_frame": "rsclip.search.export",
    "export_labels": "rsclip.search.export",
    "window_footprint": "rsclip.geo.footprints",
    "upgrade_table": "rsclip.table.tiles",
    "timeline": "rsclip.search.timeline",
    "changes": "rsclip.search.timeline",
}

__all__ = [  # sorted(_EXPORTS), written out for type checkers and IDEs
    "ClipEncoder", "DEFAULT_MODEL", "DEFAULT_TABLE", "METRIC", "add_labels", "add_tiles", "build_index", "changes",
    "classify", "connect", "convert_model", "create_table", "export", "export_frame", "export_labels", "label_sets",
    "load_model", "locate", "open_table", "query", "query_examples", "query_text", "read_labels", "remove_labels",
    "render_heatmap", "review_detections", "similar_tiles", "table_info", "tile_id", "timeline", "upgrade_table",
    "window_footprint"
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept in the package's namespace (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rsclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The package's names with the public ones not yet imported."""
    return sorted(set(globals()) | set(_EXPORTS))
