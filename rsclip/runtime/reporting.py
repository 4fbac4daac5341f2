"""How a command or job ends: an expected failure (:class:`rsclip.errors.RsclipError`) as one line on stderr
and exit status 2, anything else as a bug with its traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from rsclip.errors import RsclipError

def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type name when blank), cut to ``limit`` characters."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


# Exit status of a command or job that ended with an expected failure (one line on stderr).
EXIT_EXPECTED = 2


def run_reporting(prog: str, work: Callable[[], int | None], *, progress_logs: bool = True) -> int:
    """Run ``work()`` for the command or job ``prog`` and return its exit status.

    An :class:`RsclipError` prints one line ``prog: error: ...`` on stderr and gives :data:`EXIT_EXPECTED`;
    anything else is a bug and propagates with its traceback. A closed pipe (``| head``) ends quietly.
    ``progress_logs`` (jobs) shows rsclip's INFO log lines, e.g. one per table commit.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if progress_logs:
        logging.getLogger("rsclip").setLevel(logging.INFO)
    try:
        status = work()
    except RsclipError as exc:
        print(f"{prog}: error: {one_line(exc, 2000)}", file=sys.stderr, flush=True)
        return EXIT_EXPECTED
    except BrokenPipeError:
        return 0
    return status if isinstance(status, int) else 0
