"""How much the web app's page shows: results per search, the card grid, preview sizes, the feature finder's
patch grid."""

from __future__ import annotations

# Results per search: the sidebar slider's start and end.
DEFAULT_K = 12
MAX_K = 100
# Longest side of a result card's preview (pixels), and cards a row.
PREVIEW_SIZE = 256
GRID_COLUMNS = 4
# Feature finder: the default and largest patch grid.
DEFAULT_GRID = (3, 3)
MAX_GRID = 16
