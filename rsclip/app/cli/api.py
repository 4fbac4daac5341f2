"""``rsclip api``: serve a tile table over HTTP (the service runs as ``python -m rsclip.app.api``, which this
command becomes). What the other commands send to a running one is :mod:`~rsclip.app.cli.remote`."""

from __future__ import annotations

import argparse
import os
import sys

from rsclip.app.api import settings


def cmd_api(args: argparse.Namespace) -> None:
    """``rsclip api``: check the configuration here (errors are one line), then become the service process."""
    config = settings.config_of(args)
    env = dict(os.environ)
    if config.token:
        env[settings.TOKEN_ENV] = config.token
    else:
        env.pop(settings.TOKEN_ENV, None)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "rsclip.app.api", *settings.arguments(config)], env)


def add_api_parser(sub) -> None:
    """The ``api`` sub-command."""
    parser = sub.add_parser("api", help="serve a tile table over HTTP (search, labels, detections, OGC API - "
                                        "Features)")
    settings.add_arguments(parser)
    parser.set_defaults(run=cmd_api)
