"""rsclip: text and image search over satellite archives with CLIP.

The flat public API: load a model, write and open tile tables, query them. The package is organised in
rooms (README, Development): ``rsclip.runtime`` (storage, tables, models, images, rasters), ``rsclip.ingest``
(the embedding job), ``rsclip.train`` (fine-tuning), ``rsclip.search`` (queries), ``rsclip.app`` (command
line and web app), and ``rsclip.errors``.

Names are imported on first use, so that a process needing one module (a Ray task that decodes tiles
imports ``rsclip.ingest.reading``) does not pay for torch, transformers and LanceDB at start-up.
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "DEFAULT_MODEL": "rsclip.model.sources",
    "ClipEncoder": "rsclip.model.clip",
    "load_model": "rsclip.model.clip",
    "convert_model": "rsclip.model.convert.converter",
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

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """The ``rsclip`` package object: public names resolve lazily on first use."""

    def __getattr__(self, name: str):
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'rsclip' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        super().__setattr__(name, value)
        return value

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
