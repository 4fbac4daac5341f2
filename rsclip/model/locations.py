"""Where models are: the local model cache, the test telling a hub id from a path, and locations written absolute.

Below both :mod:`rsclip.model.sources` (which resolves every kind of model source) and
:mod:`rsclip.model.convert` (which converts checkpoints into the cache), so neither imports the other for these.
Readers take :data:`CACHE_DIR` from this module when they run, so a test that sets it here moves every cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from rsclip.runtime import storage

# Models fetched from s3:// and converted checkpoints, one folder each (RSCLIP_MODEL_CACHE moves it).
CACHE_DIR = Path(os.environ.get("RSCLIP_MODEL_CACHE", Path.home() / ".cache" / "rsclip" / "models"))


def is_hub_id(text: str) -> bool:
    """True for names that can only be hub ids (``org/name``), not local paths."""
    return not text.startswith((".", "/", "~")) and text.count("/") <= 1 and not storage.is_remote(text)


def absolute_location(uri: str) -> str:
    """A local path made absolute (as records keep it); URIs, hub ids and missing paths as they are."""
    path = storage.local_path(uri).expanduser()
    return str(path.resolve()) if not storage.is_remote(uri) and path.exists() else uri
