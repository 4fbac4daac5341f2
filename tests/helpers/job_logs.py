"""Running a job as a subprocess and reacting to the lines it prints, as it prints them.

Tests that kill a worker or a node mid-run do it on an event the job reports (a line such as ``rsclip:
checkpoint NAME registered``), never after a timer, which fails when the run is faster than the poll.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Callable


def run_streaming(cmd: list[str], *, env: dict[str, str], cwd: str | Path, timeout: float,
                  on_line: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run ``cmd``, calling ``on_line(line)`` for each line of its output (stdout and stderr) as it comes;
    returns the exit status and all lines. The process is killed after ``timeout`` seconds."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    watchdog = threading.Timer(timeout, proc.kill)  # only the process we started
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            on_line(line)
        return proc.wait(), lines
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()


def kill_at(cmd: list[str], *, env: dict[str, str], cwd: str | Path, event: bytes) -> int:
    """Run ``cmd`` and SIGKILL it (only the process started here) right after it prints a line holding
    ``event``; returns its exit status (``-SIGKILL`` when the event came)."""
    import os
    import signal

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if event in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stdout.close()

