"""A job script's command line (rsclip.runtime.jobs): progress bars on by default for a terminal, off for a log
file or a pipe, and ``--progress``/``--no-progress`` decide either way (issue 25)."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass

import pytest

from rsclip.runtime.flags import setting
from rsclip.runtime.jobs import JobEntry


@dataclass(frozen=True)
class DemoConfig:
    db: str = setting("tables", help="where the tables are")


ENTRY = JobEntry(prog="demo", config=DemoConfig, run=lambda config, **_: None, doc="A demo job.\n\nMore.")


@pytest.fixture
def terminal():
    """A real pseudo-terminal to put stderr on (in the test itself: pytest resets stderr after set-up)."""
    leader, follower = os.openpty()
    with open(follower, "w") as tty:
        yield tty
    os.close(leader)


def test_progress_bars_are_on_by_default_for_a_terminal(terminal, monkeypatch):
    monkeypatch.setattr(sys, "stderr", terminal)
    assert sys.stderr.isatty()
    assert ENTRY.parse_args([]) == (DemoConfig(), True)
    assert ENTRY.parse_args(["--no-progress", "--db", "x"]) == (DemoConfig("x"), False)


def test_progress_bars_are_off_by_default_for_a_file_or_pipe(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert ENTRY.parse_args([]) == (DemoConfig(), False)
    assert ENTRY.parse_args(["--progress"]) == (DemoConfig(), True)
