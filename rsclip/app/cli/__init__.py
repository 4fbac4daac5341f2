"""The ``rsclip`` command line: query a tile table, locate a feature in an image, classify, index, inspect, serve.

    rsclip query DB "airport" -k 10 [--bbox LON_MIN LAT_MIN LON_MAX LAT_MAX] [--near LON LAT KM] [--json]
    rsclip query DB --image PATH [--include-self] [--allow-model-mismatch]
    rsclip query DB --positive ID... [--negative ID...] [--polygon WKT|GEOJSON|FILE]
    rsclip query DB "farmland" --date 2020-01-01/2021-06-30 [--max-cloud 10] [--max-nodata 0.2]
    rsclip locate IMAGE "storage tanks" [--tile 224 | --grid ROWS COLS] [--out heatmap.png]
    rsclip classify IMAGE... --labels airport beach forest                          (search)
    rsclip index DB [--rebuild] | info DB | upgrade DB                              (tables)
    rsclip label add|remove|list|export DB LABEL ...                                (labels)
    rsclip detect DB LABEL [--background N] [--read-cpus C] ... | review DB LABEL [--min-score S] [-k N]  (detect)
    rsclip suggest DB LABEL [-k N]                                                  (detect)
    rsclip export DB (--query TEXT | --positive ID... | --detections LABEL --min-score S) --out PATH  (exports)
    rsclip timeline DB (TILE_ID | --at LON LAT) | changes DB DATE_A DATE_B          (timeline)
    rsclip serve DB [--host 127.0.0.1] [--port N] [--allowed-host NAME] [--basemap URL_TEMPLATE]   (serve)
    rsclip api DB [--host 127.0.0.1] [--port N] [--token-file F]; rsclip query ... --api URL        (api)
    rsclip convert-model RemoteCLIP-ViT-B-32.pt models/remoteclip-b32 --arch ViT-B-32-quickgelu   (models)

One module per command group (named in brackets); none imports this module or another group, what they share
is in :mod:`~rsclip.app.cli.options`, :mod:`~rsclip.app.cli.output` and :mod:`~rsclip.app.cli.remote`
(asking a running service); this module puts them together.
The command modules import the library rooms a command needs when it runs, so that ``rsclip --help`` and
``rsclip --version`` answer without loading torch, transformers or LanceDB; a command imports only its own
module (:data:`COMMANDS`), so that ``rsclip query --api URL`` loads no array or table library either.
Human-readable tables by default,
``--json`` for scripts. Expected failures (bad input, unknown tables, unreadable or refused images,
unreachable stores) end with exit status 2 and one line ``rsclip: error: ...`` on stderr; anything else is a
bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata
from typing import Sequence

from rsclip.app.cli.options import Parser
from rsclip.runtime.reporting import run_reporting

# Every sub-command, in the order ``rsclip --help`` lists them: its name, module and the function adding it.
COMMANDS = (("query", "search", "add_query_parser"), ("locate", "search", "add_locate_parser"),
            ("classify", "search", "add_classify_parser"), ("index", "tables", "add_index_parser"),
            ("info", "tables", "add_info_parser"), ("serve", "serve", "add_serve_parser"),
            ("api", "api", "add_api_parser"), ("convert-model", "models", "add_convert_parser"),
            ("label", "labels", "add_label_parser"), ("detect", "detect", "add_detect_parser"),
            ("review", "detect", "add_review_parser"), ("suggest", "detect", "add_suggest_parser"),
            ("export", "exports", "add_export_parser"), ("timeline", "timeline", "add_timeline_parser"),
            ("changes", "timeline", "add_changes_parser"), ("upgrade", "tables", "add_upgrade_parser"))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``rsclip`` argument parser: every sub-command, or (given ``command``) that one in full and the others
    by name only, so that a command imports only its own module (``rsclip query --api`` answers in a fraction
    of a second)."""
    parser = Parser(prog="rsclip", description="CLIP search over satellite archives.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, adder in COMMANDS:
        if command in (None, name):
            getattr(importlib.import_module(f"rsclip.app.cli.{module}"), adder)(sub)
        else:
            sub.add_parser(name)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not an option: ``rsclip``'s own options take no
    value), or None when that is no sub-command's name (the whole parser then says what went wrong)."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return first if first in {name for name, _, _ in COMMANDS} else None


def package_version() -> str:
    """The installed version of the rsclip package ("unknown" when it runs from a tree that is not installed)."""
    try:
        return metadata.version("rsclip")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input or usage)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    return run_reporting("rsclip", lambda: args.run(args), progress_logs=False)


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
