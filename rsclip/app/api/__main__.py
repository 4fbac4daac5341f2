"""``python -m rsclip.app.api DB ...``: the service process ``rsclip api`` runs (the token, if any, in
``RSCLIP_API_TOKEN``)."""

from __future__ import annotations

import argparse
import sys

from rsclip.app.api import settings
from rsclip.runtime.reporting import run_reporting


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rsclip api", description="Serve a tile table over HTTP.")
    settings.add_arguments(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        from rsclip.app.api.service import serve

        config = settings.config_of(args)
        print(f"rsclip api: serving {config.table} on http://{config.host}:{config.port}/", flush=True)
        serve(config)

    return run_reporting("rsclip api", run, progress_logs=False)


if __name__ == "__main__":
    sys.exit(main())
