"""Which grid a tile table's windows are cut on and how its scenes are cut, recorded in its metadata so that
every run cuts alike.

Windows of large rasters are anchored to the CRS's origin (:data:`~rsclip.geo.windows.GRID_CRS`: windows at
multiples of the tile size in map units, so scenes of one pixel grid line up across dates) or to each
scene's first pixel (:data:`~rsclip.geo.windows.GRID_SCENE`, how rsclip cut them before). New tables record
the CRS grid when created (:func:`rsclip.table.tiles.tile_schema`). A table keeps one
grid for good: a run cutting another would plan other windows (other tile ids) and add a second, offset set
of tiles beside the first. A table that records no grid took the scene's corner if it holds tiles (written
before the grid was recorded) and is new otherwise.

Scenes (rasters with a CRS) are cut into the tile grid whatever their size
(:data:`~rsclip.geo.windows.SCENES_TILED`, recorded in new tables). Tables written before took a scene up
to ``max_chip`` pixels a side whole, as one tile (:data:`~rsclip.geo.windows.SCENES_WHOLE`), and keep that
rule for good: a rerun cutting such a scene into the grid would plan other windows (other tile ids) and add
them beside its whole-scene tile, instead of skipping the file as present.
"""

from __future__ import annotations

from rsclip.table import keyed_writes
from rsclip.table.tiles import META_GRID, META_SCENES
from rsclip.geo.windows import GRID_CRS, GRID_SCENE, GRIDS, SCENE_RULES, SCENES_TILED, SCENES_WHOLE
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
        _record(table, META_GRID, grid)
    if wanted is not None and wanted != grid:
        raise InvalidInput(f"table {table.name!r} is cut on the {grid!r} grid; a run on the {wanted!r} grid would "
                           "add offset copies of its tiles. Use another table, or --grid " + grid)
    return grid


def settle_scenes(table) -> str:
    """How ``table``'s scenes are cut, recorded in it: :data:`SCENES_TILED` for a table without tiles; the
    rule it records; :data:`SCENES_WHOLE` for one written before the rule was recorded."""
    recorded = (table.schema.metadata or {}).get(META_SCENES, b"").decode()
    rule = SCENES_TILED if table.count_rows() == 0 else recorded if recorded in SCENE_RULES else SCENES_WHOLE
    if rule != recorded:
        _record(table, META_SCENES, rule)
    return rule


def _record(table, key: bytes, value: str) -> None:
    def record():
        table.to_lance().update_schema_metadata({key.decode(): value})
        table.checkout_latest()

    keyed_writes.retry_on_conflict(record, table)
