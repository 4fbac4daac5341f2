"""How many searches run at once in one process, and the slot a search request holds (:class:`searching`).

A search of a resident copy is mostly Python under the GIL: threads searching beyond the cores hand the GIL to each
other at every step, and more callers answer fewer queries per second than one. So a process runs at most
:func:`search_slots` search requests at once (a service sets its own number: the API's ``--workers``) and the
others wait their turn.
"""

from __future__ import annotations

import os
import threading
from contextlib import ContextDecorator


def search_slots() -> int:
    """How many searches one process runs at once: the CPUs it may use. A search of a resident copy is mostly Python
    under the GIL: at 1M rows 8 concurrent callers answered 0.62x the queries per second of one, 1.08x with at
    most this many at once (BENCHMARKS.md, Query, "Searches at once")."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(usable))


class searching(ContextDecorator):
    """Holds one of this process's :func:`search_slots` for a search request, from opening the table to its answer
    (the rows, or the frame): ``with searching(): ...`` or ``@searching()``. More callers wait their turn (a
    search is bounded: Lance's reads time out). Re-entered by the same thread (the
    :func:`~rsclip.search.searchers.find` inside a request), it holds the slot it has."""

    _slots = threading.BoundedSemaphore(search_slots())
    _held = threading.local()

    @classmethod
    def allow(cls, searches: int) -> None:
        """``searches`` at once from now on (a service sets it before it serves)."""
        cls._slots = threading.BoundedSemaphore(max(1, int(searches)))

    def __enter__(self) -> "searching":
        held, depth = self._held, getattr(self._held, "depth", 0)
        if depth == 0:
            held.slots = self._slots  # given back to the one it came from, whatever allow() did meanwhile
            held.slots.acquire()
        held.depth = depth + 1
        return self

    def __exit__(self, *exc) -> bool:
        held = self._held
        held.depth -= 1
        if held.depth == 0:
            held.slots.release()
        return False


__all__ = ["search_slots", "searching"]
