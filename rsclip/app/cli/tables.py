"""The ``rsclip`` commands that look after a tile table: ``index`` (build or refresh its indexes), ``info`` (rows,
model, indexes, versions, errors) and ``upgrade`` (add the columns newer rsclip records to an older table)."""

from __future__ import annotations

import argparse

from rsclip.app.cli.options import with_table
from rsclip.app.cli.output import print_json
from rsclip.table import tiles


def cmd_index(args: argparse.Namespace) -> None:
    """``rsclip index``: build or refresh the vector and scalar indexes of a table."""
    from rsclip.table.index import MIN_ANN_ROWS, build_index  # LanceDB takes a second to import: not for --help

    min_rows = MIN_ANN_ROWS if args.min_rows is None else args.min_rows
    state = build_index(args.db, args.table, rebuild=args.rebuild, min_rows=min_rows)
    if args.json:
        print_json(state.to_dict())
        return
    print(f"{args.table}: {state.action}")
    print_state(state.to_dict())


def print_state(state: dict) -> None:
    """The lines of an index state (``IndexState.to_dict()``)."""
    print(f"  rows            {state['rows']}")
    print(f"  vector index    {state['vector_index'] or 'none (exact scan)'}")
    if state["vector_index"]:
        print(f"  indexed rows    {state['indexed_rows']} ({state['unindexed_rows']} appended since, "
              "searched by scan)")
        if state["num_sub_vectors"]:
            print(f"  PQ sub-vectors  {state['num_sub_vectors']}")
    print(f"  scalar indexes  {', '.join(state['scalar_indexes']) or 'none'}")


def cmd_info(args: argparse.Namespace) -> None:
    """``rsclip info``: what a table holds and how it is indexed."""
    from rsclip.search.info import table_info  # LanceDB takes a second to import: not for --help

    info = table_info(args.db, args.table)
    if args.json:
        print_json(info)
        return
    print(f"{info['db']} / {info['table']}")
    print(f"  model           {info['model']} ({info['dim']}-d)")
    if info["weights_sha256"]:
        print(f"  weights         {info['model_location']} (sha256 {info['weights_sha256'][:16]}...)")
    print(f"  version         {info['version']} of {info['versions']} (last write {info['last_write']})")
    errors = info["errors"]
    print(f"  errors          {errors if errors is not None else 'none recorded'}"
          + (f" (table {args.table}_errors)" if errors else ""))
    print_state(info["index"])
    others = [t for t in info["tables"] if t != args.table]
    if others:
        print(f"  other tables    {', '.join(others)}")


def cmd_upgrade(args: argparse.Namespace) -> None:
    """``rsclip upgrade``: add the columns newer rsclip records (all null) to an older table, in place."""
    table = tiles.open_table(args.db, args.table)
    before = set(table.schema.names)
    tiles.upgrade_table(table)
    added = [c for c in table.schema.names if c not in before]
    if args.json:
        print_json({"table": args.table, "added": added, "rows": table.count_rows()})
        return
    print(f"{args.table}: " + (f"added {', '.join(added)} (null); {table.count_rows()} rows kept" if added
                               else "up to date"))


def add_index_parser(sub) -> None:
    """The ``index`` sub-command."""
    ix = with_table(sub.add_parser("index", help="build or refresh the ANN and scalar indexes"))
    ix.add_argument("--rebuild", action="store_true", help="retrain the vector index")
    ix.add_argument("--min-rows", type=int, default=None, help="smallest table that gets a vector index")
    ix.set_defaults(run=cmd_index)


def add_info_parser(sub) -> None:
    """The ``info`` sub-command."""
    info = with_table(sub.add_parser("info", help="rows, model, indexes, versions, errors of a table"))
    info.set_defaults(run=cmd_info)


def add_upgrade_parser(sub) -> None:
    """The ``upgrade`` sub-command."""
    up = with_table(sub.add_parser("upgrade", help="add the columns newer rsclip records to an older table "
                                                   "(null; nothing is embedded again)"))
    up.set_defaults(run=cmd_upgrade)
