"""The Detections view: run the detector for the current label set, then review what it found.

"Run detector" starts a background run (:mod:`rsclip.app.web.data.detection_runs`: its own process, one per table,
bounded in number and time) and returns at once; its progress is redrawn every :data:`POLL_S` seconds by a
fragment of the page, and the review below refreshes when it ends. The review shows the label set's
detections scoring at least the chosen threshold under the search area, best first: on the map (the best
``MAX_MAP_FEATURES``) and as cards (the best ``k``) with "+" / "-", so mistakes become labels for the next
run, under a panel of the tiles to label next (:mod:`rsclip.app.web.views.label_next`); at most
:data:`~rsclip.app.web.data.download_files.MAX_DOWNLOAD_ROWS` are reviewed (and downloadable) at once.
"""

from __future__ import annotations

import streamlit as st

from rsclip.app.web.context import PageContext
from rsclip.app.web.data import detection_runs as runs
from rsclip.app.web.data.download_files import MAX_DOWNLOAD_ROWS
from rsclip.app.web.keys import (KEY_DETECT_BACKGROUND, KEY_DETECT_PROGRESS, KEY_DETECT_RESULTS, KEY_DETECT_RUN,
                                 KEY_DETECT_THRESHOLD, STATE_MESSAGE, VIEW_DETECT)
from rsclip.app.web.text import escape_markdown, readable_error
from rsclip.app.web.views.label_next import label_next
from rsclip.app.web.views.results import show_results
from rsclip.detect.probe import DEFAULT_BACKGROUND, quality_sentence
from rsclip.errors import LimitExceeded, NotFound
from rsclip.search.review import review_detections

DEFAULT_THRESHOLD = 0.5
POLL_S = 2.0
_SEEN = "detect_run_seen"  # session state: the finished run the review was last refreshed for


def detect_view(ctx: PageContext) -> None:
    """Draw the Detections view (see the module)."""
    if ctx.label is None:
        with st.container(key=KEY_DETECT_RESULTS):
            st.caption("Choose or name a label set in the sidebar, label a few tiles + and \u2212, then run the "
                       "detector here.")
        return
    left, right = st.columns([2, 1])
    with right:
        background = st.number_input(
            "Background negatives", 0, runs.MAX_BACKGROUND, DEFAULT_BACKGROUND, step=50, key=KEY_DETECT_BACKGROUND,
            help="random tiles of the table added to the negatives (needed when the set has no negative)")
    with left:
        st.markdown(f"Detect **{escape_markdown(ctx.label)}** in every tile of the table: a linear probe on the "
                    "set's labels scores each tile.")
        st.button("Run detector", key=KEY_DETECT_RUN, type="primary", on_click=start,
                  args=(ctx.config.db, ctx.config.table, ctx.label, int(background), ctx.config.ray_address))
    run = runs.current_run(ctx.config.db, ctx.config.table)
    going = run is not None and run.state == runs.RUNNING
    st.fragment(run_every=POLL_S if going else None)(show_progress)(ctx.config.db, ctx.config.table)
    label_next(ctx)
    review(ctx)


def start(db: str, table: str, label: str, background: int, ray_address: str | None) -> None:
    """Button callback: start a run, or leave the reason it cannot start as a message."""
    try:
        runs.start_run(db, table, label, background=background, ray_address=ray_address)
    except ValueError as exc:
        st.session_state[STATE_MESSAGE] = ("error", f"Detector: {escape_markdown(readable_error(exc))}")


def show_progress(db: str, table: str) -> None:
    """The latest run's progress or outcome; once it has ended, the page is redrawn (once) for the review."""
    run = runs.current_run(db, table)
    with st.container(key=KEY_DETECT_PROGRESS):
        if run is None:
            st.caption("No detection run on this server yet.")
            return
        name = escape_markdown(run.label)
        if run.state == runs.RUNNING:
            parts = f"{run.parts_done} of {run.parts} part(s)" if run.parts else "training the probe"
            st.progress(run.fraction or 0.0, text=f"Detecting {name}: {parts}, {run.rows:,} tiles scored, "
                                                  f"{run.seconds():.0f} s")
            return
        if run.state == runs.DONE:
            st.success(f"Detection run of {name} finished in {run.seconds():.0f} s: {describe(run.summary)}")
        else:
            st.error(f"Detection run of {name} failed: {escape_markdown(run.error)}")
    if st.session_state.get(_SEEN) != run.started:
        st.session_state[_SEEN] = run.started
        st.rerun()


def describe(summary: dict | None) -> str:
    """One line of a run's summary: tiles scored and the probe's cross-validated quality."""
    summary = summary or {}
    metrics = summary.get("metrics") or {}
    return (f"{summary.get('rows_scored', 0):,} of {summary.get('table_rows', 0):,} tiles scored "
            f"({quality_sentence(metrics)})")


def review(ctx: PageContext) -> None:
    """The detections above the threshold under the search area: map, downloads, cards."""
    threshold = st.slider("Minimum score", 0.0, 1.0, DEFAULT_THRESHOLD, 0.01, key=KEY_DETECT_THRESHOLD)
    try:
        frame = review_detections(ctx.config.db, ctx.label, min_score=threshold, table=ctx.config.table,
                                  limit=MAX_DOWNLOAD_ROWS, **ctx.filters())
    except NotFound:
        with st.container(key=KEY_DETECT_RESULTS):
            st.info(f"No detections of {escape_markdown(ctx.label)} yet: press \"Run detector\".")
        return
    except LimitExceeded as exc:
        st.warning(f"{escape_markdown(readable_error(exc))}")
        return
    except Exception as exc:
        st.error(f"Review failed: {escape_markdown(readable_error(exc))}")
        return
    show_results(ctx, frame, VIEW_DETECT, cards=ctx.k, what="detections",
                 empty=f"No detection scores at least {threshold:.2f} in the search area.")
