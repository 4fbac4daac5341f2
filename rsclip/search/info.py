"""What a tile table holds: rows, model, embedding size, indexes, versions and recorded write errors."""

from __future__ import annotations

from rsclip.table import tiles
from rsclip.table.index import index_state


def table_info(db, table: str = tiles.DEFAULT_TABLE) -> dict:
    """Rows, model (and the recorded weights: location and sha256, None for tables written before they were
    recorded), embedding size, index state, versions and write-error count of a tile table.

    Raises ``NotFound`` for an unknown table and ``InvalidInput`` for a table without rsclip metadata.
    """
    tbl = tiles.open_table(db, table)
    model, dim = tiles.table_model(tbl)
    versions = tbl.list_versions()
    conn = tiles.connect(db)
    names = tiles.table_names(conn)
    errors_table = tiles.errors_table_name(table)
    errors = conn.open_table(errors_table).count_rows() if errors_table in names else None
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
