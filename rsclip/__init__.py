"""rsclip: text and image search over satellite archives with CLIP.

The flat public API: load a model, write and open tile tables, query them.

Names are imported on first use, so that a process needing one module (a Ray task that decodes tiles
imports ``rsclip.archive``) does not pay for torch, transformers and LanceDB at start-up.
"""

from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    "DEFAULT_MODEL": "rsclip.model",
    "ClipEncoder": "rsclip.model",
    "load_model": "rsclip.model",
    "build_index": "rsclip.index",
    "locate": "rsclip.locate",
    "render_heatmap": "rsclip.locate",
    "query": "rsclip.query",
    "classify": "rsclip.zeroshot",
    "DEFAULT_TABLE": "rsclip.store",
    "METRIC": "rsclip.store",
    "add_tiles": "rsclip.store",
    "connect": "rsclip.store",
    "create_table": "rsclip.store",
    "open_table": "rsclip.store",
    "tile_id": "rsclip.store",
}

__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """The ``rsclip`` package object: public names resolve lazily, and ``rsclip.query`` / ``rsclip.locate``
    stay the functions after their modules of the same name are imported (the import system sets a package
    attribute to each submodule it loads; this keeps the function there instead)."""

    def __getattr__(self, name: str):
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'rsclip' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__ == f"rsclip.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
