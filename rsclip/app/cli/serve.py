"""The ``rsclip serve`` command: the web search page for a table, started through the launcher
(:mod:`rsclip.app.server`; the command line never imports the web app itself).

    rsclip serve DB [--host 127.0.0.1] [--port N] [--allowed-host NAME] [--basemap URL_TEMPLATE]
                    [--resident-max-gb GB]
"""

from __future__ import annotations

import argparse

from rsclip.app import server
from rsclip.app.cli.options import add_db_arguments
from rsclip.table import tiles


def cmd_serve(args: argparse.Namespace) -> int:
    """``rsclip serve``: check the basemap and the table, then serve the page until the server exits."""
    server.validate_basemap(args.basemap)  # fail fast, one line, on a bad template or limit, a wrong DB or table
    resident_max_gb = server.validate_resident_gb(args.resident_max_gb)
    tiles.open_table(args.db, args.table)
    options = {"port": args.port} if args.port is not None else {}
    return server.serve(args.db, table=args.table, host=args.host, hosts=tuple(args.allowed_host),
                        basemap=args.basemap, ray_address=args.ray_address, resident_max_gb=resident_max_gb,
                        **options)


def add_serve_parser(sub) -> None:
    """The ``serve`` sub-command and its arguments."""
    sv = add_db_arguments(sub.add_parser("serve", help="the web search page for a table",
                                         description="Serve the web search page for the tile table --table of "
                                                     "the database DB."))
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
    sv.add_argument("--resident-max-gb", type=float, metavar="GB",
                    help="largest in-memory copy of the table searches keep (default: 8, at most 40%% of the "
                         "memory); a larger table is kept compact (~360 bytes per 512-d row), else searched "
                         "through Lance")
    sv.set_defaults(run=cmd_serve)
