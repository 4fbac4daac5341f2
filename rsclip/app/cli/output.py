"""What the ``rsclip`` commands print: tables for people, JSON for scripts (``--json``), and nothing else on
stderr while a model loads (stderr is for errors). Tables are drawn from JSON rows (:func:`records`), so a
command answered by a running service (``--api``) prints what it prints alone, without loading pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rsclip.app.records import dumps, records

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["dumps", "records", "print_json", "print_table", "table_text", "say", "quiet_model_loading"]

MAX_CELL = 80  # characters of one cell; longer texts end in "..."
MISSING = "-"


def print_json(obj: Any) -> None:
    """``obj`` as one line of JSON on stdout (values JSON does not know written as text)."""
    print(dumps(obj))


def print_table(frame: pd.DataFrame | Sequence[dict], floats: str = "{:.4f}") -> None:
    """``frame`` (a DataFrame, or rows as :func:`records` gives them) as a plain-text table on stdout."""
    print(table_text(frame if isinstance(frame, Sequence) else records(frame), floats))


def table_text(rows: Sequence[dict], floats: str = "{:.4f}") -> str:
    """Rows as a plain-text table: a header of the first row's keys, numbers right-aligned, texts left-aligned,
    missing values ``-``; ``(no results)`` when there are no rows."""
    if not rows:
        return "(no results)"
    columns = list(rows[0])
    cells = [[cell_text(row.get(c), floats) for c in columns] for row in rows]
    lines = [columns, *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    numeric = [all(is_number(row.get(c)) or row.get(c) is None for row in rows) for c in columns]
    return "\n".join(" ".join(text.rjust(w) if right else text.ljust(w)
                              for text, w, right in zip(line, widths, numeric)).rstrip() for line in lines)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell_text(value: Any, floats: str) -> str:
    """One value as a table cell."""
    if value is None:
        return MISSING
    text = floats.format(value) if isinstance(value, float) else str(value)
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 3] + "..."


def say(args, record: dict, text: str) -> None:
    """``record`` as JSON when the command was given ``--json``, else the sentence ``text``."""
    print_json(record) if args.json else print(text)


def quiet_model_loading() -> None:
    """No progress bars from transformers while a model loads: stderr is for errors."""
    from transformers.utils import logging as hf_logging  # half a second to import: only when a model loads

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
