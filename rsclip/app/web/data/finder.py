"""The feature finder of the web demo: one uploaded image, one typed text, patch probabilities and a heatmap.

:func:`find_feature` checks the upload (name, bytes, pixels: :mod:`rsclip.app.web.data.uploads`), scores its patches
with :func:`rsclip.search.locate.locate` (the text is always text, never a path) and keeps only what the page
shows, at display size: the patch table, a heatmap PNG at most :data:`OVERLAY_MAX_SIDE` a side and
thumbnails of at most :data:`MAX_PATCH_THUMBNAILS` patches, :data:`THUMBNAIL_SIDE` a side. A result is a few
megabytes whatever the upload, so the page's cache of results stays bounded in bytes as well as entries.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rsclip.app.web.data.uploads import decode_upload
from rsclip.geo import raster
from rsclip.table import tiles
from rsclip.geo.windows import Window
from rsclip.search.locate import PatchSource, locate, render_heatmap
from rsclip.search.encoding import Text, checked_text

# What one result holds for the page (see the module docstring).
MAX_PATCH_THUMBNAILS = 48
THUMBNAIL_SIDE = 128
OVERLAY_MAX_SIDE = 1024


@dataclass
class FeatureMatch:
    """What the feature finder shows for one uploaded image and one text.

    ``patches``: ``rsclip.locate`` output (best first; lon/lat bounds when the upload is a georeferenced
    raster); ``overlay_png``: the heatmap of patch probabilities over the image, at most
    :data:`OVERLAY_MAX_SIDE` a side; ``thumbnails``: RGB uint8 pixels of the patches the page shows (all
    of them up to :data:`MAX_PATCH_THUMBNAILS`, else the most likely), keyed by ``(row, col)``.
    """

    patches: pd.DataFrame
    overlay_png: bytes
    thumbnails: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def shown(self) -> pd.DataFrame:
        """The patches that have thumbnails: all in grid order, or the most likely first when there are more
        than :data:`MAX_PATCH_THUMBNAILS`."""
        if len(self.patches) > MAX_PATCH_THUMBNAILS:
            return self.patches.head(MAX_PATCH_THUMBNAILS)
        return self.patches.sort_values(["row", "col"])

    def patch_pixels(self, row) -> np.ndarray:
        """The pixels of one shown patch (a row of :attr:`patches`), at most :data:`THUMBNAIL_SIDE` a side."""
        return self.thumbnails[(int(row["row"]), int(row["col"]))]

    def probability_grid(self) -> pd.DataFrame:
        """Patch probabilities laid out as the patch grid: one row per patch row, one column per patch column."""
        grid = self.patches.pivot_table(index="row", columns="col", values="probability", aggfunc="max")
        grid.index.name, grid.columns.name = "row", "col"
        return grid


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``pixels`` scaled down so no side exceeds ``side`` (never scaled up)."""
    height, width = raster.fit_shape(pixels.shape[1], pixels.shape[0], side)
    if (height, width) == pixels.shape[:2]:
        return np.ascontiguousarray(pixels)
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def _match(image, text: Text, model: str, grid, tile) -> FeatureMatch:
    patches = locate(image, text, model=model, grid=grid, tile=tile)
    overlay = render_heatmap(image, patches, max_side=OVERLAY_MAX_SIDE)
    match = FeatureMatch(patches, overlay)
    with PatchSource(image) as source:
        for row in match.shown().to_dict("records"):
            pixels = source.read(Window(*(int(row[c]) for c in tiles.WINDOW_COLUMNS)))
            if pixels is not None:
                match.thumbnails[(int(row["row"]), int(row["col"]))] = thumbnail(pixels)
    return match


def find_feature(
    data: bytes,
    name: str,
    text: str,
    *,
    model: str,
    grid: tuple[int, int] | None = None,
    tile: int | None = None,
) -> FeatureMatch:
    """Score the patches of an uploaded image (``data`` named ``name``) against the text ``text``.

    ``text`` is encoded as text whatever it looks like (a URI, a path). Patches are a ``grid=(rows, cols)``
    of equal parts or ``tile``-pixel squares (see ``rsclip.locate``). The upload is checked and decoded by
    :func:`~rsclip.app.web.data.uploads.decode_upload` first (its name's format only, bytes and pixels limited); a
    GeoTIFF is then located from a temporary file so patches carry lon/lat bounds. Raises ``InvalidInput``
    (``UnsafeInput``, ``LimitExceeded``) for refused or unreadable uploads, blank or long text and
    impossible grids.
    """
    text = Text(checked_text(text, "the feature to find"))
    pixels = decode_upload(data, name)
    if not raster.is_raster(name):
        return _match(pixels, text, model, grid, tile)
    del pixels  # the raster is read window by window from here on
    with tempfile.TemporaryDirectory(prefix="rsclip-upload-") as folder:
        path = Path(folder) / ("upload" + Path(name).suffix.lower())
        path.write_bytes(data)
        return _match(str(path), text, model, grid, tile)
