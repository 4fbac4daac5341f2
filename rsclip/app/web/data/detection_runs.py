"""Detection runs started from the web app: one background process per run, bounded, watched, never waited on.

A run is ``python -m rsclip.app.web.data.detect_worker`` (:mod:`rsclip.app.web.data.detect_worker`) in its own
process session: the Streamlit server only starts it and reads its progress lines in a thread, so no visitor's
page waits for it and the server keeps serving. Runs are bounded: one at a time per table (a second is
refused while the first runs, whatever the label set: two runs would compete for the same cluster and
the same detections table), at most :data:`MAX_RUNS` on one server, each stopped after
:data:`RUN_TIMEOUT_S`. What a visitor chose (the label set, the number of background negatives) is checked
before the process starts and passed as separate arguments, never through a shell.

The registry lives in this module, so every session of the server sees the same runs.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rsclip.app.processes import stop_process_group
from rsclip.table import labels
from rsclip.detect.probe import DEFAULT_BACKGROUND
from rsclip.errors import InvalidInput, LimitExceeded

MAX_RUNS = 2
RUN_TIMEOUT_S = 3600.0
MAX_BACKGROUND = 5_000  # random tiles a visitor may add as negatives
MAX_LINE_CHARS = 100_000  # a progress line longer than this is cut (and then not JSON: ignored)
TAIL_LINES = 20
RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass
class DetectionRun:
    """One run's state, updated by its reader thread: ``state`` (running, done, failed), the parts planned
    and recorded, the rows committed, the summary of a finished run or the ``error`` of a failed one."""

    db: str
    table: str
    label: str
    background: int
    started: float = field(default_factory=time.monotonic)
    state: str = RUNNING
    parts: int | None = None
    parts_done: int = 0
    rows: int = 0
    summary: dict | None = None
    error: str | None = None
    finished: float | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    process: subprocess.Popen | None = None

    @property
    def fraction(self) -> float | None:
        """The share of planned parts recorded so far (None until the plan is known)."""
        if self.state == DONE:
            return 1.0
        if not self.parts:
            return None
        return min(1.0, self.parts_done / self.parts)

    def seconds(self) -> float:
        """Seconds the run has taken so far (or took)."""
        return (self.finished or time.monotonic()) - self.started

    def read(self, line: str) -> None:
        """Take one line of the worker's output into the state."""
        try:
            event = json.loads(line)
        except ValueError:
            self.tail.append(line.rstrip()[:300])
            return
        if not isinstance(event, dict):
            return
        kind = event.get("event")
        if kind == "plan":
            self.parts = int(event.get("parts") or 0)
        elif kind == "part":
            self.parts_done += 1
        elif kind == "rows":
            self.rows = int(event.get("rows") or 0)
        elif kind == "done":
            self.summary = event.get("summary") if isinstance(event.get("summary"), dict) else {}
        elif kind == "error":
            self.error = str(event.get("message"))[:300]

    def stop(self) -> None:
        """End the worker's whole process group (Ray's local processes with it)."""
        stop_process_group(self.process)


_runs: dict[tuple[str, str], DetectionRun] = {}
_lock = threading.Lock()


def current_run(db: str, table: str) -> DetectionRun | None:
    """The latest run on ``table`` of ``db`` started by this server (running or finished), or None."""
    with _lock:
        return _runs.get((db, table))


def worker_command(run: DetectionRun, ray_address: str | None) -> list[str]:
    """The command line of ``run``'s worker process."""
    cmd = [sys.executable, "-m", "rsclip.app.web.data.detect_worker", "--db", run.db, "--table", run.table,
           "--label", run.label, "--background", str(run.background)]
    return cmd + (["--ray-address", ray_address] if ray_address else [])


def start_run(db: str, table: str, label: str, *, background: int = DEFAULT_BACKGROUND,
              ray_address: str | None = None) -> DetectionRun:
    """Start a detection run of label set ``label`` on ``table`` in the background; returns it at once.

    Raises ``InvalidInput`` for a bad label name or background count and ``LimitExceeded`` while a run on
    ``table`` is going, or :data:`MAX_RUNS` runs are.
    """
    label = labels.validate_label(label)
    if isinstance(background, bool) or not isinstance(background, int) or not 0 <= background <= MAX_BACKGROUND:
        raise InvalidInput(f"background negatives must be an integer in [0, {MAX_BACKGROUND}], got {background!r}")
    with _lock:
        going = [r for r in _runs.values() if r.state == RUNNING]
        mine = _runs.get((db, table))
        if mine is not None and mine.state == RUNNING:
            raise LimitExceeded(f"a detection run on table {table!r} (label set {mine.label!r}) is still going: "
                                "one run per table at a time")
        if len(going) >= MAX_RUNS:
            raise LimitExceeded(f"{len(going)} detection runs are going on this server, the most it runs at once")
        run = DetectionRun(db, table, label, background)
        run.process = subprocess.Popen(worker_command(run, ray_address), stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                                       start_new_session=True)
        _runs[(db, table)] = run
    threading.Thread(target=_follow, args=(run,), name=f"rsclip-detect-{table}", daemon=True).start()
    return run


def _follow(run: DetectionRun) -> None:
    """Read ``run``'s progress until its process ends (stopped after :data:`RUN_TIMEOUT_S`)."""
    timer = threading.Timer(RUN_TIMEOUT_S, _time_out, args=(run,))
    timer.daemon = True
    timer.start()
    try:
        for line in iter(lambda: run.process.stdout.readline(MAX_LINE_CHARS), ""):
            run.read(line)
        code = run.process.wait()
    finally:
        timer.cancel()
    with _lock:
        run.finished = time.monotonic()
        if code == 0 and run.summary is not None:
            run.state = DONE
        else:
            run.state = FAILED
            run.error = run.error or (f"the detection run ended with exit status {code}"
                                      + (f": {run.tail[-1]}" if run.tail else ""))


def _time_out(run: DetectionRun) -> None:
    run.error = f"the detection run took longer than {RUN_TIMEOUT_S:.0f} s and was stopped"
    run.stop()


@atexit.register
def _stop_all() -> None:
    """A server that exits stops its runs (each is its own process session, which would outlive it)."""
    with _lock:
        running = [r for r in _runs.values() if r.state == RUNNING]
    for run in running:
        run.stop()
