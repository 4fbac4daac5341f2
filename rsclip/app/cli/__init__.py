"""The ``rsclip`` command line: query a tile table, locate a feature in an image, classify, index, inspect, serve.

    rsclip query DB "airport" -k 10 [--bbox LON_MIN LAT_MIN LON_MAX LAT_MAX] [--near LON LAT KM] [--json]
    rsclip query DB --image PATH [--include-self] [--allow-model-mismatch]
    rsclip query DB --positive ID... [--negative ID...] [--polygon WKT|GEOJSON|FILE]
    rsclip label add|remove|list|export DB LABEL ...     (rsclip.app.commands_geo)
    rsclip export DB (--query TEXT | --positive ID... | --detections LABEL --min-score S) --out PATH
    rsclip query DB "farmland" --date 2020-01-01/2021-06-30 [--max-cloud 10] [--max-nodata 0.2]
    rsclip timeline DB (TILE_ID | --at LON LAT) | changes DB DATE_A DATE_B | upgrade DB   (rsclip.app.commands_time)
    rsclip locate IMAGE "storage tanks" [--tile 224 | --grid ROWS COLS] [--out heatmap.png]
    rsclip classify IMAGE... --labels airport beach forest
    rsclip index DB [--rebuild]
    rsclip info DB
    rsclip serve DB [--host 127.0.0.1] [--port N] [--allowed-host NAME] [--basemap URL_TEMPLATE]
    rsclip convert-model RemoteCLIP-ViT-B-32.pt models/remoteclip-b32 --arch ViT-B-32-quickgelu

Human-readable tables by default, ``--json`` for scripts. Expected failures (bad input, unknown tables,
unreadable or refused images, unreachable stores) end with exit status 2 and one line ``rsclip: error: ...``
on stderr; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rsclip.app import commands_geo, commands_time
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.errors import InvalidInput, run_reporting

CliError = InvalidInput  # bad command-line input: one line, exit status 2


def _numbers(values: Sequence[str], count: int, what: str) -> tuple[float, ...]:
    """``count`` floats from arguments given as separate words or comma-separated."""
    parts = [p for v in values for p in re.split(r"[,\s]+", v.strip()) if p]
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        raise CliError(f"{what} must be {count} numbers, got {' '.join(values)!r}") from None
    if len(numbers) != count:
        raise CliError(f"{what} must be {count} numbers, got {len(numbers)}: {' '.join(values)!r}")
    return numbers


def _records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN and None become null)."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
                v = None
            elif isinstance(v, np.generic):
                v = v.item()
            elif v is pd.NA:
                v = None
            clean[k] = v
        out.append(clean)
    return out


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None, default=str))


def _print_table(frame: pd.DataFrame, floats: str = "{:.4f}") -> None:
    if frame.empty:
        print("(no results)")
        return
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(frame.to_string(index=False, float_format=floats.format, na_rep="-"))


def _quiet_model_loading() -> None:
    """No progress bars from transformers while a model loads: stderr is for errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_query(args) -> None:
    from rsclip.search.query import Text, query

    _quiet_model_loading()

    from rsclip.app.commands_geo import area

    examples = bool(args.positive or args.negative)
    if [args.text is not None, args.image is not None, examples].count(True) != 1:
        raise CliError("give either a text, --image PATH or --positive/--negative examples (one of them)")
    what = Text(args.text) if args.text is not None else None  # the positional text is text, never a path
    if args.image is not None:  # a path here is always an image, so a missing file is an error, not text
        what = args.image if storage.is_remote(args.image) else Path(args.image)
    frame = query(args.db, what, k=args.k, table=args.table, exclude_self=not args.include_self,
                  allow_model_mismatch=args.allow_model_mismatch, positive=args.positive if examples else None,
                  negative=args.negative, **area(args))
    if args.json:
        _print_json(_records(frame))
        return
    shown = frame.drop(columns=[tiles.ID, tiles.CRS])
    _print_table(shown)


def cmd_locate(args) -> None:
    from rsclip.search.locate import locate, render_heatmap

    _quiet_model_loading()

    grid = tuple(args.grid) if args.grid else None
    frame = locate(args.image, args.text, model=args.model, tile=args.tile, grid=grid, overlap=args.overlap,
                   bands=args.bands)
    if args.out:
        render_heatmap(args.image, frame, args.out, bands=args.bands)
    top = frame.head(args.top) if args.top else frame
    if args.json:
        _print_json({"width": frame.attrs["width"], "height": frame.attrs["height"], "crs": frame.attrs["crs"],
                     "text": args.text, "heatmap": args.out, "patches": _records(top)})
        return
    print(f"{args.image}: {frame.attrs['width']}x{frame.attrs['height']} px, {len(frame)} patches, "
          f"best for {args.text!r} first")
    _print_table(top.dropna(axis=1, how="all"))
    if args.out:
        print(f"heatmap written to {args.out}")


def cmd_classify(args) -> None:
    from rsclip.model.prompts import SEED_TEMPLATE, TEMPLATES
    from rsclip.search.zeroshot import classify

    _quiet_model_loading()

    templates = {"ensemble": TEMPLATES, "seed": (SEED_TEMPLATE,)}[args.templates]
    frame = classify(args.images, args.labels, templates=templates, model=args.model)
    frame.insert(0, "image", [str(p) for p in args.images])
    if args.json:
        _print_json(_records(frame))
        return
    _print_table(frame)


def cmd_index(args) -> None:
    from rsclip.table.index import build_index

    state = build_index(args.db, args.table, rebuild=args.rebuild, min_rows=args.min_rows)
    if args.json:
        _print_json(state.to_dict())
        return
    print(f"{args.table}: {state.action}")
    _print_state(state.to_dict())


def _print_state(state: dict) -> None:
    """The lines of an index state (``IndexState.to_dict()``)."""
    print(f"  rows            {state['rows']}")
    print(f"  vector index    {state['vector_index'] or 'none (exact scan)'}")
    if state["vector_index"]:
        print(f"  indexed rows    {state['indexed_rows']} ({state['unindexed_rows']} appended since, "
              "searched by scan)")
        if state["num_sub_vectors"]:
            print(f"  PQ sub-vectors  {state['num_sub_vectors']}")
    print(f"  scalar indexes  {', '.join(state['scalar_indexes']) or 'none'}")


def cmd_info(args) -> None:
    from rsclip.search.info import table_info

    info = table_info(args.db, args.table)
    if args.json:
        _print_json(info)
        return
    print(f"{info['db']} / {info['table']}")
    print(f"  model           {info['model']} ({info['dim']}-d)")
    if info["weights_sha256"]:
        print(f"  weights         {info['model_location']} (sha256 {info['weights_sha256'][:16]}...)")
    print(f"  version         {info['version']} of {info['versions']} (last write {info['last_write']})")
    errors = info["errors"]
    print(f"  errors          {errors if errors is not None else 'none recorded'}"
          + (f" (table {args.table}_errors)" if errors else ""))
    _print_state(info["index"])
    others = [t for t in info["tables"] if t != args.table]
    if others:
        print(f"  other tables    {', '.join(others)}")


def cmd_serve(args) -> int:
    from rsclip.app import server

    server.validate_basemap(args.basemap)  # fail fast, one line, on a bad template, a wrong DB or table
    tiles.open_table(args.db, args.table)
    options = {"port": args.port} if args.port is not None else {}
    return server.serve(args.db, table=args.table, host=args.host, hosts=tuple(args.allowed_host),
                        basemap=args.basemap, ray_address=args.ray_address, **options)


def cmd_convert_model(args) -> None:
    from rsclip.model.convert.converter import convert_model

    _quiet_model_loading()
    record = convert_model(args.source, args.destination, arch=args.arch)
    if args.json:
        _print_json(record)
        return
    arch = record["architecture"]
    name = arch["name"] if isinstance(arch, dict) else arch
    print(f"{args.destination}: converted {record['source']} ({record['format']}, {name})")
    for entry in record["source_files"]:
        print(f"  {entry['name']}  sha256 {entry['sha256']}")


def add_convert_parser(sub) -> None:
    """The ``convert-model`` sub-command."""
    cv = sub.add_parser("convert-model", help="convert an open_clip/OpenAI checkpoint or a Hugging Face .bin CLIP "
                                              "into a safetensors save_pretrained folder")
    cv.add_argument("source", metavar="SRC",
                    help="checkpoint file (.pt/.bin, local or s3://) with --arch, open_clip:ARCH:URI, or a "
                         "Hugging Face CLIP folder, s3:// prefix or hub id (hf-bin:SRC)")
    cv.add_argument("destination", metavar="DST", help="new folder or s3:// prefix for the converted model")
    cv.add_argument("--arch", help="open_clip architecture of a checkpoint file: ViT-B-32, ViT-L-14-336, "
                                   "ViT-B-32-quickgelu, ... or an open_clip model-config .json")
    cv.add_argument("--json", action="store_true", help="print the conversion record as JSON")
    cv.set_defaults(run=cmd_convert_model)


def build_parser() -> argparse.ArgumentParser:
    """The ``rsclip`` argument parser (sub-commands query, locate, classify, index, info, serve)."""
    from rsclip.model.clip import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="rsclip", description="CLIP search over satellite archives.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_table(p):
        p.add_argument("db", metavar="DB", help="table folder: local path or s3:// URI")
        p.add_argument("--table", default=tiles.DEFAULT_TABLE, help="table name (default: %(default)s)")
        p.add_argument("--json", action="store_true", help="machine-readable JSON output")
        return p

    q = with_table(sub.add_parser("query", help="rank tiles against a text or an image"))
    q.add_argument("text", nargs="?", help="text to search for")
    q.add_argument("--image", help="image path or s3:// URI to search with (more like this)")
    q.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    q.add_argument("--bbox", nargs="+", metavar="N", help="lon_min lat_min lon_max lat_max (WGS84)")
    q.add_argument("--near", nargs="+", metavar="N", help="lon lat radius_km: tiles within the radius")
    q.add_argument("--where", help="extra SQL filter on the table's columns")
    q.add_argument("--include-self", action="store_true", help="keep the query image's own tile")
    q.add_argument("--allow-model-mismatch", action="store_true", help="search even if the weights changed")
    q.set_defaults(run=cmd_query)  # --positive/--negative/--polygon: commands_geo.register

    lo = sub.add_parser("locate", help="find a text feature inside one image (patch heatmap)")
    lo.add_argument("image", metavar="IMAGE", help="image or raster: local path or s3:// URI")
    lo.add_argument("text", metavar="TEXT")
    lo.add_argument("--model", default=DEFAULT_MODEL, help="CLIP model: hub id, folder or s3:// prefix")
    lo.add_argument("--tile", type=int, help="patch side in pixels (default 224)")
    lo.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"), help="cut into ROWS x COLS parts")
    lo.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tile patches")
    lo.add_argument("--bands", type=int, nargs="+", help="1-based raster bands shown as RGB")
    lo.add_argument("--out", help="write a heatmap overlay PNG here (local or s3://)")
    lo.add_argument("--top", type=int, default=10, help="patches to print (0 = all; default: %(default)s)")
    lo.add_argument("--json", action="store_true")
    lo.set_defaults(run=cmd_locate)

    c = sub.add_parser("classify", help="zero-shot label probabilities for images")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--labels", nargs="+", required=True, help="candidate labels")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--templates", choices=("ensemble", "seed"), default="ensemble",
                   help="prompt ensemble or the seed's single prompt (default: %(default)s)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=cmd_classify)

    ix = with_table(sub.add_parser("index", help="build or refresh the ANN and scalar indexes"))
    ix.add_argument("--rebuild", action="store_true", help="retrain the vector index")
    ix.add_argument("--min-rows", type=int, default=None, help="smallest table that gets a vector index")
    ix.set_defaults(run=cmd_index)

    info = with_table(sub.add_parser("info", help="rows, model, indexes, versions, errors of a table"))
    info.set_defaults(run=cmd_info)

    _add_serve(sub)
    add_convert_parser(sub)
    commands_geo.register(sub, with_table)
    commands_time.register(sub, with_table)
    return parser


def _add_serve(sub) -> None:
    """The ``serve`` sub-command and its arguments."""
    sv = sub.add_parser("serve", help="the web search page for a table")
    sv.add_argument("db", metavar="DB")
    sv.add_argument("--table", default=tiles.DEFAULT_TABLE)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, help="port (default: the web app's)")
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="a Host name browsers may use besides 127.0.0.1/localhost, e.g. the public name of an "
                         "authenticating proxy in front (repeatable)")
    sv.add_argument("--basemap", metavar="URL_TEMPLATE",
                    help="XYZ tiles drawn under the map, e.g. https://tile.example.org/{z}/{x}/{y}.png (default: "
                         "none; the page then fetches nothing but the app itself)")
    sv.add_argument("--ray-address", metavar="ADDRESS",
                    help="Ray cluster that detection runs use (default: RAY_ADDRESS, else a private local Ray)")
    sv.set_defaults(run=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "min_rows", 0) is None:
        from rsclip.table.index import MIN_ANN_ROWS

        args.min_rows = MIN_ANN_ROWS
    return run_reporting("rsclip", lambda: args.run(args), progress_logs=False)


if __name__ == "__main__":
    sys.exit(main())
