"""The search commands of ``rsclip``: ``query`` (rank a table's tiles against a text, an image or example tiles),
``locate`` (a text feature inside one image) and ``classify`` (zero-shot labels of images)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rsclip.app.api import client
from rsclip.app.cli.remote import add_api_option, ask_query
from rsclip.app.cli.options import (add_area_arguments, add_example_arguments, add_time_arguments, area,
                                    with_table)
from rsclip.app.cli.output import print_json, print_table, quiet_model_loading, records
from rsclip.errors import InvalidInput
from rsclip.model.sources import DEFAULT_MODEL
from rsclip.runtime import storage
from rsclip.table import names


def cmd_query(args: argparse.Namespace) -> None:
    """``rsclip query``: the best ``k`` tiles for a text, an image or examples, under the area and time filters.
    The table shows each tile's ``id`` (what ``rsclip label add --positive ID`` takes); JSON has every column."""
    examples = bool(args.positive or args.negative)
    if [args.text is not None, args.image is not None, examples].count(True) != 1:
        raise InvalidInput("give either a text, --image PATH or --positive/--negative examples (one of them)")
    url = client.api_url(args.api)
    if url is not None:
        show(args, ask_query(url, args, area(args)))
        return
    from rsclip.search.encoding import Text  # torch takes seconds to import: not for --help
    from rsclip.search.query import query

    quiet_model_loading()
    what = Text(args.text) if args.text is not None else None  # the positional text is text, never a path
    if args.image is not None:  # a path here is always an image, so a missing file is an error, not text
        what = args.image if storage.is_remote(args.image) else Path(args.image)
    frame = query(args.db, what, k=args.k, table=args.table, exclude_self=not args.include_self,
                  allow_model_mismatch=args.allow_model_mismatch, positive=args.positive if examples else None,
                  negative=args.negative, **area(args))
    show(args, records(frame))


def show(args: argparse.Namespace, rows: list[dict]) -> None:
    """Result rows as ``rsclip query`` prints them: JSON, or a table without the crs column."""
    if args.json:
        print_json(rows)
        return
    print_table([{k: v for k, v in row.items() if k != names.CRS} for row in rows])


def cmd_locate(args: argparse.Namespace) -> None:
    """``rsclip locate``: the patches of one image scored against a text, best first (and a heatmap)."""
    from rsclip.search.locate import locate, render_heatmap  # torch takes seconds to import: not for --help

    quiet_model_loading()
    grid = tuple(args.grid) if args.grid else None
    frame = locate(args.image, args.text, model=args.model, db=args.db, table=args.table, tile=args.tile, grid=grid,
                   overlap=args.overlap, bands=args.bands)
    if args.out:
        render_heatmap(args.image, frame, args.out, bands=args.bands)
    top = frame.head(args.top) if args.top else frame
    if args.json:
        print_json({"width": frame.attrs["width"], "height": frame.attrs["height"], "crs": frame.attrs["crs"],
                    "text": args.text, "heatmap": args.out, "patches": records(top)})
        return
    print(f"{args.image}: {frame.attrs['width']}x{frame.attrs['height']} px, {len(frame)} patches, "
          f"best for {args.text!r} first")
    print_table(top.dropna(axis=1, how="all"))
    if args.out:
        print(f"heatmap written to {args.out}")


def cmd_classify(args: argparse.Namespace) -> None:
    """``rsclip classify``: zero-shot label probabilities of each image."""
    from rsclip.model.prompts import SEED_TEMPLATE, TEMPLATES
    from rsclip.search.zeroshot import classify  # torch takes seconds to import: not for --help

    quiet_model_loading()
    templates = {"ensemble": TEMPLATES, "seed": (SEED_TEMPLATE,)}[args.templates]
    frame = classify(args.images, args.labels, templates=templates, model=args.model, db=args.db, table=args.table)
    frame.insert(0, "image", [str(p) for p in args.images])
    if args.json:
        print_json(records(frame))
        return
    print_table(frame)


def add_query_parser(sub) -> None:
    """The ``query`` sub-command: a text, ``--image`` or examples, and the area and time filters."""
    q = with_table(sub.add_parser("query", help="rank tiles against a text or an image"))
    q.add_argument("text", nargs="?", help="text to search for")
    q.add_argument("--image", help="image path or s3:// URI to search with (more like this)")
    q.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    add_area_arguments(q)
    q.add_argument("--include-self", action="store_true", help="keep the query image's own tile")
    q.add_argument("--allow-model-mismatch", action="store_true", help="search even if the weights changed")
    add_example_arguments(q)
    add_time_arguments(q)
    add_api_option(q)
    q.set_defaults(run=cmd_query)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, or ``--db`` (and ``--table``) to take the model that embedded a tile table."""
    parser.add_argument("--model", help=f"CLIP model: hub id, folder or s3:// prefix (default: the model of the "
                                        f"--db table, else {DEFAULT_MODEL})")
    parser.add_argument("--db", help="tile table folder (local or s3://) whose model to use when --model is not given")
    parser.add_argument("--table", default=names.DEFAULT_TABLE, help="table name in --db (default: %(default)s)")


def add_locate_parser(sub) -> None:
    """The ``locate`` sub-command."""
    lo = sub.add_parser("locate", help="find a text feature inside one image (patch heatmap)")
    lo.add_argument("image", metavar="IMAGE", help="image or raster: local path or s3:// URI")
    lo.add_argument("text", metavar="TEXT")
    add_model_arguments(lo)
    lo.add_argument("--tile", type=int, help="patch side in pixels (default 224)")
    lo.add_argument("--grid", type=int, nargs=2, metavar=("ROWS", "COLS"), help="cut into ROWS x COLS parts")
    lo.add_argument("--overlap", type=int, default=0, help="pixels shared by neighbouring tile patches")
    lo.add_argument("--bands", type=int, nargs="+", help="1-based raster bands shown as RGB")
    lo.add_argument("--out", help="write a heatmap overlay PNG here (local or s3://)")
    lo.add_argument("--top", type=int, default=10, help="patches to print (0 = all; default: %(default)s)")
    lo.add_argument("--json", action="store_true")
    lo.set_defaults(run=cmd_locate)


def add_classify_parser(sub) -> None:
    """The ``classify`` sub-command."""
    c = sub.add_parser("classify", help="zero-shot label probabilities for images")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--labels", nargs="+", required=True, help="candidate labels")
    add_model_arguments(c)
    c.add_argument("--templates", choices=("ensemble", "seed"), default="ensemble",
                   help="prompt ensemble or the seed's single prompt (default: %(default)s)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(run=cmd_classify)
