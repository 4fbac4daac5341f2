"""The entry of a Ray Data job script: its config's flags parsed, the cluster joined, the summary printed.

``jobs/embed_archive.py`` and ``jobs/detect.py`` are one :class:`JobEntry` each: the flags are generated from
the job's config dataclass (:mod:`rsclip.runtime.flags`) plus ``--progress``/``--no-progress`` (progress bars,
by default on when stderr is a terminal); the run joins the cluster the
job was submitted to (``RAY_ADDRESS``) or starts a private local one, and prints its summary as a human line
and one ``summary: {json}`` line. An expected failure is one ``PROG: error: ...`` line and exit status 2
(:func:`rsclip.runtime.reporting.run_reporting`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from rsclip.runtime import cluster, flags
from rsclip.runtime.reporting import run_reporting


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` on a job's command line (:func:`wants_progress`)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction,
                        help="show Ray Data progress bars (default: when stderr is a terminal)")


def wants_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: ``--progress``/``--no-progress``, else when stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else args.progress


@dataclass(frozen=True)
class JobEntry:
    """A job script's entry.

    ``prog`` names the job in its error lines; ``config`` is the dataclass whose fields are the flags
    (``required``: those that must be given); ``run(config, progress=..., ray_address=...)`` runs the job and
    returns a summary with ``to_text()`` and ``to_json()``; ``--help`` shows the first line of ``doc``.
    """

    prog: str
    config: type
    run: Callable[..., Any]
    doc: str
    required: tuple[str, ...] = field(default=())

    def parse_args(self, argv: list[str] | None = None) -> tuple[Any, bool]:
        """The job's config and whether to show progress bars (``--progress``/``--no-progress``, by default
        when stderr is a terminal), from the command line (``argv``: the process's).
        Exits with status 2 and a usage line for flags that do not parse or settings that do not fit."""
        parser = argparse.ArgumentParser(description=self.doc.splitlines()[0])
        flags.add_arguments(parser, self.config, required=self.required)
        add_progress_argument(parser)
        args = parser.parse_args(argv)
        progress = wants_progress(args)
        try:
            return flags.from_arguments(args, self.config), progress
        except ValueError as exc:
            parser.error(str(exc))

    def main(self, argv: list[str] | None = None) -> int:
        """Parse ``argv``, run the job on the job's cluster (or a private local one), print its summary; the
        exit status (0 done, 2 for an expected failure, reported in one line)."""
        def work() -> None:
            config, progress = self.parse_args(argv)
            summary = self.run(config, progress=progress, ray_address=cluster.job_address() or cluster.LOCAL)
            print(summary.to_text(), flush=True)
            print("summary: " + summary.to_json(), flush=True)

        return run_reporting(self.prog, work)
