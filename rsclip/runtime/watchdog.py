"""The stall watchdog: a driver thread that says on the console which stage of a run has stopped moving.

Progress is what the driver reports (:meth:`Watchdog.progress`, e.g. once per committed batch) or any
change in the run's in-flight data tasks, read from Ray's state API: Ray Data's read/decode tasks, its
actor-pool map calls and the train workers' block fetches. After ``report_after`` seconds without either,
one line goes to the log (stderr): the driver's stage, the stages with tasks in flight (running for how
long, or waiting), the actors still starting (their constructor running, for how long) and those and the
placement groups still waiting for resources, and what the cluster has free; again every ``report_after`` seconds. After ``stop_after`` seconds the watchdog interrupts the
driver's main thread and leaving the ``with`` block raises :class:`~rsclip.errors.RsclipError` carrying the
same diagnosis (exit status 2 and one line in the jobs), instead of a run that waits forever.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter, defaultdict

from rsclip.errors import RsclipError

log = logging.getLogger(__name__)

# Seconds one state-API query may take; the watchdog never blocks the run on the dashboard.
STATE_API_TIMEOUT_S = 10
# Most in-flight tasks read per query (a run's concurrency is far below this).
MAX_TASKS = 5000
# Ray Data's data plane besides plain tasks: actor-pool map calls, and train workers fetching blocks.
_DATA_ACTOR_CALLS = ("MapWorker(", "SplitCoordinator.")
_DONE = ("FINISHED", "FAILED")
_CREATION = "ACTOR_CREATION_TASK"
_DIAGNOSIS_CHARS = 1500


def _connected() -> bool:
    """Whether this process is connected to Ray (the state API would otherwise start a local cluster)."""
    import ray

    return ray.is_initialized()


def _job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def _address() -> str:
    """The connected cluster's GCS address: the state API asked without one picks "the latest cluster" on this
    host, and refuses to choose when two run here (another job's, a test's)."""
    import ray

    return ray.get_runtime_context().gcs_address


def _in_flight(detail: bool) -> list | None:
    """This job's tasks that have not ended, or None when the state API does not answer (no dashboard)."""
    from ray.util.state import list_tasks

    if not _connected():
        return None
    filters = [("job_id", "=", _job_id()), *(("state", "!=", s) for s in _DONE)]
    try:
        return list_tasks(address=_address(), filters=filters, detail=detail, limit=MAX_TASKS,
                          timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
    except Exception as exc:  # the dashboard is optional; a failed query is "unknown", never fatal
        log.debug("state API unavailable: %s", exc)
        return None


def activity() -> frozenset[str] | None:
    """The ids of this job's data tasks in flight (None when unknown): when the set changes, data moves."""
    tasks = _in_flight(detail=False)
    if tasks is None:
        return None
    return frozenset(t.task_id for t in tasks
                     if t.type == "NORMAL_TASK" or any(m in (t.name or "") for m in _DATA_ACTOR_CALLS))


def _resources(bundle: dict | None) -> str:
    shown = {k: v for k, v in (bundle or {}).items() if k in ("CPU", "GPU") or not k[0].islower()}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "nothing"


def _internal(name: str) -> bool:
    """Ray's own helpers (``_StatsActor``, ``ns:_AutoscalingCoordinatorActor``...): not a stage of the run."""
    return name.rsplit(":", 1)[-1].startswith("_")


def _stages(tasks: list) -> list[str]:
    """Per task name: how many run (and the oldest for how long) and how many wait; longest running first."""
    now_ms = time.time() * 1000
    running: Counter = Counter()
    waiting: Counter = Counter()
    oldest: dict[str, float] = {}
    for t in tasks:
        name = t.name or t.func_or_class_name or "?"
        if _internal(name) or t.type == _CREATION:  # actors being created: _actors_pending says which
            continue
        if str(t.state).startswith("RUNNING"):
            running[name] += 1
            if t.start_time_ms:
                oldest[name] = max(oldest.get(name, 0.0), (now_ms - t.start_time_ms) / 1000)
        else:
            waiting[name] += 1
    lines = []
    by_age = sorted(set(running) | set(waiting), key=lambda n: (-oldest.get(n, 0.0), -running[n] - waiting[n]))
    for name in by_age[:5]:
        run = f"{running[name]} running" + (f" (oldest {oldest[name]:.0f} s)" if name in oldest else "")
        lines.append(f"{name}: {run}, {waiting[name]} waiting")
    return lines


def constructors_running(tasks: list) -> dict[str, float]:
    """Actor id -> seconds its constructor has been running, for the actors among ``tasks`` (state API task
    records) whose creation task runs: placed, but not started yet."""
    now_ms = time.time() * 1000
    return {t.actor_id: (now_ms - t.start_time_ms) / 1000 if t.start_time_ms else 0.0 for t in tasks
            if t.type == _CREATION and t.actor_id and str(t.state).startswith("RUNNING")}


def pending_actors(actors: list, running: dict[str, float]) -> list[str]:
    """Lines on ``actors`` (state API records of actors not created yet): per class, those whose constructor
    runs (``running``: :func:`constructors_running`) and those that wait for resources, with what they ask."""
    starting: dict[str, list[float]] = defaultdict(list)
    waiting: dict[tuple[str, str], int] = defaultdict(int)
    for a in actors:
        if _internal(a.class_name or ""):
            continue
        if a.actor_id in running:
            starting[a.class_name].append(running[a.actor_id])
        else:
            waiting[(a.class_name, _resources(a.required_resources))] += 1
    lines = [f"actor {name} still starting (constructor running for {max(ages):.0f} s)" if len(ages) == 1 else
             f"{len(ages)} {name} actors still starting (constructors running for up to {max(ages):.0f} s)"
             for name, ages in starting.items()]
    return lines + [f"{n} {name} actor{'s' if n > 1 else ''} wait for resources ({need})"
                    for (name, need), n in waiting.items()]


def _waiting_for_resources(tasks: list | None) -> list[str]:
    """This job's actors not created yet (starting, or waiting to be placed) and placement groups waiting,
    with what each one asks for; ``tasks``: the job's tasks in flight (None: unknown)."""
    from ray.util.state import list_actors, list_placement_groups

    lines: list[str] = []
    if not _connected():
        return lines
    job = _job_id()
    try:
        actors = list_actors(address=_address(), filters=[("job_id", "=", job), ("state", "=", "PENDING_CREATION")],
                             detail=True, timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
        groups = list_placement_groups(address=_address(),
                                       filters=[("creator_job_id", "=", job), ("state", "=", "PENDING")],
                                       detail=True, timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
    except Exception:
        return lines
    lines += pending_actors(actors, constructors_running(tasks or []))
    for g in groups:
        bundles = [b.get("unit_resources") or {} for b in (g.bundles or [])]
        lines.append(f"placement group {g.name or g.placement_group_id[:8]} waits for {len(bundles)} bundles of "
                     f"({_resources(bundles[0] if bundles else {})})")
    return lines


def _free() -> str:
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    keys = [k for k in ("CPU", "GPU") if total.get(k)]
    return "cluster free: " + (", ".join(f"{k} {free.get(k, 0):g} of {total[k]:g}" for k in keys) or "nothing")


def diagnose(stage: str) -> str:
    """One line on where a run is stuck: the driver's ``stage``, the stages in flight, what waits, what is free."""
    parts = [f"driver: {stage}"]
    tasks = _in_flight(detail=True)
    parts += _stages(tasks) if tasks is not None else ["task states unknown (no dashboard)"]
    parts += _waiting_for_resources(tasks)
    try:
        if _connected():
            parts.append(_free())
    except Exception:  # the cluster went away: the diagnosis is best effort
        pass
    text = "; ".join(parts)
    return text if len(text) <= _DIAGNOSIS_CHARS else text[: _DIAGNOSIS_CHARS - 3] + "..."


class Watchdog:
    """``with Watchdog("embedding", report_after=300, stop_after=3600) as dog: ... dog.progress("...")``.

    ``what`` names the run in messages; ``flag`` names the setting that raises ``stop_after``. A zero
    ``report_after`` / ``stop_after`` turns reporting / stopping off. Stopping needs the ``with`` block to
    run on the main thread (the interrupt goes there); elsewhere the watchdog only reports.
    """

    def __init__(self, what: str, *, report_after: float, stop_after: float = 0.0, flag: str = "--stall-abort"):
        self.what, self.report_after, self.stop_after, self.flag = what, report_after, stop_after, flag
        self._stage = "starting"
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped_with: str | None = None
        self._restore: tuple | None = None  # SIGINT's handler and the signal mask before the block

    def progress(self, stage: str | None = None) -> None:
        """Mark progress now; ``stage`` says what the driver does next (shown when it stalls)."""
        with self._lock:
            self._last = time.monotonic()
            if stage is not None:
                self._stage = stage

    def _idle(self) -> tuple[float, str]:
        with self._lock:
            return time.monotonic() - self._last, self._stage

    def __enter__(self) -> "Watchdog":
        if threading.current_thread() is not threading.main_thread():
            self.stop_after = 0.0
        if self.stop_after:  # the interrupt must reach this thread: Python's handler, SIGINT not blocked
            self._restore = (signal.signal(signal.SIGINT, signal.default_int_handler),
                             signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}))
        limits = [t for t in (self.report_after, self.stop_after) if t > 0]
        if limits:
            poll = min(max(min(limits) / 4, 0.5), 30.0)
            self._thread = threading.Thread(target=self._watch, args=(poll,), name="rsclip-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._done.set()
        if self._thread is not None:
            self._thread.join(3 * STATE_API_TIMEOUT_S)
        if self._restore is not None:
            handler, mask = self._restore
            signal.signal(signal.SIGINT, handler if handler is not None else signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._restore = None
        if self._stopped_with is not None and exc_type is not None:
            # the interrupt, or whatever the run made of it (Ray Train wraps it in its own error)
            raise RsclipError(self._stopped_with) from None
        return False

    def _watch(self, poll: float) -> None:
        seen = activity()
        next_report = self.report_after
        while not self._done.wait(poll):
            now = activity()
            if now is not None and now != seen:
                seen = now
                self.progress()
            idle, stage = self._idle()
            if idle < next_report - self.report_after:
                next_report = self.report_after  # progress since the last report: start over
            if self.stop_after and idle >= self.stop_after:
                self._stop(idle, stage)
                return
            if self.report_after and idle >= next_report:
                log.warning("%s has made no progress for %.0f s: %s", self.what, idle, diagnose(stage))
                next_report += self.report_after

    def _stop(self, idle: float, stage: str) -> None:
        self._stopped_with = (f"{self.what} made no progress for {idle:.0f} s and was stopped: {diagnose(stage)}; "
                              f"if it is only slow, raise {self.flag}")
        if not self._done.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


__all__ = ["Watchdog", "activity", "diagnose"]
