"""Which grid a tile table's windows are cut on, recorded in its metadata so that every run cuts alike.

Windows of large rasters are anchored to the CRS's origin (:data:`~rsclip.geo.windows.GRID_CRS`: windows at
multiples of the tile size in map units, so scenes of one pixel grid line up across dates) or to each
scene's first pixel (:data:`~rsclip.geo.windows.GRID_SCENE`, how rsclip cut them before). New tables record
the CRS grid when created (:func:`rsclip.table.tiles.tile_schema`). A table keeps one
grid for good: a run cutting another would plan other windows (other tile ids) and add a second, offset set
of tiles beside the first. A table that records no grid took the scene's corner if it holds tiles (written
before the grid was recorded) and is new otherwise.
"""

from __future__ import annotations

from rsclip.table import keyed_writes
from rsclip.table.tiles import META_GRID
from rsclip.geo.windows import GRID_CRS, GRID_SCENE, GRIDS
from rsclip.errors import InvalidInput


def recorded_grid(table) -> str | None:
    """The grid ``table`` records (None: none recorded)."""
    value = (table.schema.metadata or {}).get(META_GRID, b"").decode()
    return value if value in GRIDS else None


def settle_grid(table, wanted: str | None = None) -> str:
    """The grid to cut ``table``'s windows on, recorded in it: the one it records; ``wanted`` (default
    :data:`GRID_CRS`) for a table without tiles; :data:`GRID_SCENE` for one written before grids were
    recorded. Raises ``InvalidInput`` when ``wanted`` is not the grid the table's tiles were cut on."""
    grid = recorded_grid(table)
    empty = table.count_rows() == 0
    if grid is None or (empty and wanted not in (None, grid)):  # a table without tiles takes the grid asked for
        grid = (wanted or GRID_CRS) if empty else GRID_SCENE

        def record():
            table.to_lance().update_schema_metadata({META_GRID.decode(): grid})
            table.checkout_latest()

        keyed_writes.retry_on_conflict(record, table)
    if wanted is not None and wanted != grid:
        raise InvalidInput(f"table {table.name!r} is cut on the {grid!r} grid; a run on the {wanted!r} grid would "
                           "add offset copies of its tiles. Use another table, or --grid " + grid)
    return grid
