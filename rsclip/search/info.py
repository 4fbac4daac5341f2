"""What a tile table holds: rows, model, embedding size, indexes, versions and recorded write errors."""

from __future__ import annotations

from rsclip.table import opening, tiles
from rsclip.table.index import index_state


def table_info(db, table: str = tiles.DEFAULT_TABLE) -> dict:
    """Rows, model (and the recorded weights), embedding size, index state, versions and write-error count of
    a tile table.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        table: The name of the tile table.

    Returns:
        A dict with keys db, table, rows, model, dim, model_location and weights_sha256 (the recorded weights:
        None for tables written before they were recorded), version, versions, last_write, errors (rows of the
        errors table, None without one), index (the index state) and tables (every table of ``db``).

    Raises:
        NotFound: For an unknown table.
        InvalidInput: For a table without rsclip metadata.
    """
    tbl = tiles.open_table(db, table)
    model, dim = tiles.table_model(tbl)
    versions = tbl.list_versions()
    conn = tiles.connect(db)
    names = tiles.table_names(conn)
    errors_table = opening.open_if_created(conn, tiles.errors_table_name(table), names)  # None: none, or being created
    errors = errors_table.count_rows() if errors_table is not None else None
    state = index_state(tbl)
    weights = tiles.table_weights(tbl)
    return {
        "db": str(db), "table": table, "rows": state.rows, "model": model, "dim": dim,
        "model_location": weights.location if weights else None,
        "weights_sha256": weights.weights_sha256 if weights else None,
        "version": tbl.version, "versions": len(versions),
        "last_write": str(versions[-1]["timestamp"]) if versions else None,
        "errors": errors, "index": state.to_dict(), "tables": names,
    }
