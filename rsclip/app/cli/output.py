"""What the ``rsclip`` commands print: tables for people, JSON for scripts (``--json``), and nothing else on
stderr while a model loads (stderr is for errors)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from rsclip.app.records import dumps, records

__all__ = ["dumps", "records", "print_json", "print_table", "say", "quiet_model_loading"]


def print_json(obj: Any) -> None:
    """``obj`` as one line of JSON on stdout (values JSON does not know written as text)."""
    print(dumps(obj))


def print_table(frame: pd.DataFrame, floats: str = "{:.4f}") -> None:
    """``frame`` as a plain-text table on stdout (``(no results)`` when empty)."""
    if frame.empty:
        print("(no results)")
        return
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(frame.to_string(index=False, float_format=floats.format, na_rep="-"))


def say(args, record: dict, text: str) -> None:
    """``record`` as JSON when the command was given ``--json``, else the sentence ``text``."""
    print_json(record) if args.json else print(text)


def quiet_model_loading() -> None:
    """No progress bars from transformers while a model loads: stderr is for errors."""
    from transformers.utils import logging as hf_logging  # half a second to import: only when a model loads

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
