"""Labelling in the web app: the label set "+" and "-" write to, the buttons, their counts.

A label set is chosen among the table's (``<table>_labels``, :mod:`rsclip.table.labels`) or named anew in the
sidebar; a typed name is text, at most ``MAX_LABEL_CHARS`` characters, and must match
:data:`rsclip.table.labels.LABEL_PATTERN` before anything is written (the labels module quotes it into its
SQL; nothing else is built from it). "+" on a tile makes it a positive of the set, "-" a negative; pressing
the button of the value a tile already has removes its label, so a mistake is undone with the same click.
"""

from __future__ import annotations

import streamlit as st

from rsclip.app.web.context import PageContext
from rsclip.app.web.keys import (KEY_LABEL_CHOICE, KEY_LABEL_COUNTS, KEY_LABEL_NEW, STATE_FIND_MORE, STATE_LABEL,
                                 STATE_MESSAGE)
from rsclip.app.web.text import escape_markdown, readable_error
from rsclip.table import labels, tiles
from rsclip.errors import NotFound

MAX_LABEL_CHARS = 64  # as LABEL_PATTERN allows
NEW_SET = "New label set..."
PLUS, MINUS = "+", "\u2212"


def label_choice(config) -> str | None:
    """The sidebar's label-set chooser: an existing set, or a new name typed by the visitor (validated).
    Returns the chosen set's name, or None."""
    try:
        sets = labels.label_sets(config.db, table=config.table)
        names = [str(n) for n in sets[labels.LABEL]]
    except Exception as exc:
        st.error(f"Label sets: {escape_markdown(readable_error(exc))}")
        names = []
    chosen = st.session_state.get(STATE_LABEL)
    options = [NEW_SET, *names]
    if st.session_state.get(KEY_LABEL_CHOICE) not in options:  # first run, or a set that is gone
        st.session_state[KEY_LABEL_CHOICE] = chosen if chosen in options else NEW_SET
    picked = st.selectbox("Label set", options, key=KEY_LABEL_CHOICE, format_func=str)
    if picked == NEW_SET:
        typed = st.text_input("Name of a new label set", key=KEY_LABEL_NEW, max_chars=MAX_LABEL_CHARS,
                              placeholder="e.g. solar-farms")
        if not typed.strip():
            st.session_state.pop(STATE_LABEL, None)
            return None
        try:
            picked = labels.validate_label(typed.strip())
        except ValueError as exc:
            st.error(escape_markdown(readable_error(exc)))
            st.session_state.pop(STATE_LABEL, None)
            return None
    if st.session_state.get(STATE_LABEL) != picked:
        st.session_state[STATE_FIND_MORE] = False  # another set: its own example search
    st.session_state[STATE_LABEL] = picked
    return picked


def labelled_tiles(config, label: str | None) -> dict[str, int]:
    """``{tile id: +1 or -1}`` of the label set ``label`` (empty for a set with no label yet)."""
    if label is None:
        return {}
    try:
        frame = labels.read_labels(config.db, label, table=config.table)
    except NotFound:
        return {}
    return dict(zip(frame[tiles.ID].astype(str), frame[labels.VALUE].astype(int)))


def counts_text(ctx: PageContext) -> str:
    """The positives and negatives of the current set, as markdown (the set's name escaped)."""
    if ctx.label is None:
        return "Choose or name a label set to label tiles with + and \u2212."
    values = list(ctx.labelled.values())
    return (f"**{escape_markdown(ctx.label)}**: {values.count(labels.POSITIVE)} positive, "
            f"{values.count(labels.NEGATIVE)} negative")


def show_counts(ctx: PageContext) -> None:
    """The sidebar's count of the current set's positives and negatives."""
    with st.container(key=KEY_LABEL_COUNTS):
        st.caption(counts_text(ctx))


def toggle_label(db: str, table: str, label: str, tile_id: str, value: int, current: int | None) -> None:
    """Button callback: give ``tile_id`` the ``value`` (+1/-1) in ``label``, or remove its label when it has
    that value already. A failure is left as a message for the page."""
    try:
        if current == value:
            labels.remove_labels(db, label, [tile_id], table=table)
        elif value == labels.POSITIVE:
            labels.add_labels(db, label, positive=[tile_id], table=table)
        else:
            labels.add_labels(db, label, negative=[tile_id], table=table)
    except Exception as exc:
        st.session_state[STATE_MESSAGE] = ("error", f"Label: {escape_markdown(readable_error(exc))}")
        return
    if st.session_state.get(KEY_LABEL_CHOICE) == NEW_SET:  # the new set exists now: choose it by name
        st.session_state[KEY_LABEL_CHOICE] = label


def label_buttons(ctx: PageContext, tile_id: str, key: str) -> None:
    """The "+" and "-" buttons of one tile (keys ``<key>-pos`` / ``<key>-neg``), the tile's current value
    highlighted; disabled until a label set is chosen. The caller lays them out (a horizontal container)."""
    current = ctx.labelled.get(tile_id)
    where = escape_markdown(ctx.label) if ctx.label else "a label set (choose one in the sidebar)"
    for value, text, suffix in ((labels.POSITIVE, PLUS, "pos"), (labels.NEGATIVE, MINUS, "neg")):
        kind = "positive" if value == labels.POSITIVE else "negative"
        st.button(text, key=f"{key}-{suffix}", disabled=ctx.label is None,
                  type="primary" if current == value else "secondary",
                  help=f"remove this tile from {where}" if current == value else f"label this tile {kind} in {where}",
                  on_click=toggle_label, args=(ctx.config.db, ctx.config.table, ctx.label, tile_id, value, current))
