"""What every bench script shares: checked prerequisites, the machine's load, interleaved rounds of the arms
being compared, the median and min-max spread of every figure and ratio, target verdicts and the JSON line.

On a 2-core machine one run of a benchmark swings past its target in both directions, so a figure is never
one run: each *arm* (rsclip, its baseline, ...) runs once per *round*, the arms of a round interleaved
(ABBA: the order reverses every other round, so drift within a round favours no arm), after discarded
warm-up runs. A ratio is taken within each round (both sides under the same load) and reported as the median
over the rounds with its min-max spread; a target is **met** when the whole spread is on its side, met by
the **median only** when only the median is, else **missed**.

A script builds its parser with :func:`parser`, states what it needs (:func:`module_need`,
:func:`path_need`, :func:`binary_need`), then::

    bench = Bench("embed", args, needs=[...]).start()     # prerequisites, load average at the start
    figures = bench.rounds([Arm("model", ...), Arm("e2e", ...)])
    bench.finish(figures, ratios={"ratio": ("e2e_img_s", "model_img_s")}, targets=[Target("ratio", ">=", 0.9)])

Standard library only, so that ``--help`` and a missing prerequisite answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RSICD = DATA / "rsicd-aid"
RSICD_IMAGES = RSICD / "RSICD_images"

INSTALL_BENCH = "install rsclip with its dependencies: make install"
INSTALL_TEST = "install the [test] extra: .venv/bin/python -m pip install -e '.[test]', or run make install"
FETCH_DATA = "the shared data set is missing: see ../shared/data/README (or set RSCLIP_SHARED_DATA)"

DEFAULT_REPEATS = 3
DEFAULT_WARMUP = 1
ORDERS = ("abba", "abab")
EXIT_PREREQUISITE = 2  # what rsclip's commands return for a clear one-line error
SETTLE_S = 90.0  # the longest a script waits at its start for the load of what ran before it to decay

MET, MEDIAN_ONLY, MISSED = "met", "median only", "missed"

Figures = dict[str, list[float]]


# --- prerequisites -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """Something a script needs before it does any work: ``present()`` says whether it is there, ``fix`` how
    to get it."""

    what: str
    present: Callable[[], bool]
    fix: str


def module_need(name: str, fix: str = INSTALL_BENCH) -> Need:
    """A Python module that must import (a broken install counts as missing)."""
    def present() -> bool:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - ImportError, or an extension built against another numpy
            return False
        return True
    return Need(f"the Python module {name!r}", present, fix)


def path_need(path: Path, fix: str = FETCH_DATA) -> Need:
    """A file or folder that must exist (a folder must not be empty)."""
    def present() -> bool:
        return path.is_file() or (path.is_dir() and any(path.iterdir()))
    return Need(str(path), present, fix)


def binary_need(name: str, fix: str = INSTALL_TEST) -> Need:
    """An executable beside this Python or on PATH."""
    return Need(f"the {name!r} executable",
                lambda: (Path(sys.executable).parent / name).exists() or shutil.which(name) is not None, fix)


def missing(needs: Sequence[Need]) -> list[Need]:
    """The needs that are not met, in order."""
    return [need for need in needs if not need.present()]


# --- the shared data ----------------------------------------------------------------------------------------

def chips(n: int) -> list[Path]:
    """``n`` real RSICD/AID JPEG chips (150x150), the 2,100 scenes repeated in order past 2,100."""
    files = sorted(RSICD_IMAGES.glob("*.jpg"))
    return [files[i % len(files)] for i in range(n)]


def upload_chips(client, bucket: str, prefix: str, files: Sequence[Path]) -> str:
    """Upload ``files`` under ``s3://bucket/prefix`` with ``client`` (boto3); a repeated file goes under a
    new folder so every object is distinct. Returns the prefix's URI."""
    seen: dict[str, int] = {}
    for f in files:
        copy = seen[f.name] = seen.get(f.name, -1) + 1
        client.upload_file(str(f), bucket, f"{prefix}/{copy}/{f.name}")
    return f"s3://{bucket}/{prefix}"


# --- the machine ---------------------------------------------------------------------------------------------

def in_table_folder(name: str, db: str | None, measure: Callable[[Path], dict]) -> dict:
    """``measure(db / ...)``: the tables in ``db`` when given (kept), else in a temporary folder removed
    afterwards."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f"rsclip-bench-{name}-"))
    try:
        return measure(Path(db) if db else tmp / "db")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def memory_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB, e.g. ``VmRSS`` (resident now), ``VmHWM``
    (its peak: unlike ru_maxrss, without the parent's memory at the fork that started it) or ``RssShmem`` (the
    shared-memory pages in VmRSS); NaN where absent."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:  # not Linux
        return float("nan")
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_report(when: str, *, warn: bool = True) -> tuple[float, list[str]]:
    """The 1-minute load average and the lines that report it (with ``warn``, a warning when it is above the
    core count; at the end the load includes the benchmark's own work, so it is reported without one)."""
    one, five, fifteen = os.getloadavg()
    cores = cpus()
    lines = [f"load average at the {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {cores} cores"]
    if warn and one > cores:
        lines.append(f"WARNING: the machine is busy (1-minute load {one:.1f} > {cores} cores): the figures "
                     f"will be noisy and may not say whether a target is met; rerun on a quiet machine")
    return one, lines


def settle(say: Callable[[str], None], limit_s: float = SETTLE_S, poll_s: float = 5.0) -> None:
    """Wait up to ``limit_s`` for the 1-minute load to fall to the core count: a script started right after
    another (``make bench``) would otherwise report that one's work as a busy machine. Sleeps only."""
    deadline = time.monotonic() + limit_s
    if os.getloadavg()[0] > cpus():
        say(f"waiting up to {limit_s:.0f} s for the 1-minute load ({os.getloadavg()[0]:.2f}) to settle")
    while os.getloadavg()[0] > cpus() and time.monotonic() < deadline:
        time.sleep(poll_s)


# --- interleaving, median and spread -------------------------------------------------------------------------

def schedule(arms: Sequence[str], rounds: int, order: str = "abba") -> list[list[str]]:
    """The order the arms run in, round by round: ``abab`` keeps one order; ``abba`` reverses it every other
    round, so each arm runs as often first as last and a drift within a round favours none of them."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    return [list(arms)[::-1] if order == "abba" and r % 2 else list(arms) for r in range(rounds)]


@dataclass(frozen=True)
class Spread:
    """The median of a figure over the rounds and its range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if not values:
            raise ValueError("no values")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)))


def per_round_ratios(figures: Mapping[str, Sequence[float]], ratios: Mapping[str, tuple[str, str]]) -> Figures:
    """``{name: [numerator / denominator of each round]}``: a ratio is taken within a round, where both sides
    ran under the same load, never between medians."""
    out: Figures = {}
    for name, (num, den) in ratios.items():
        a, b = figures[num], figures[den]
        if len(a) != len(b):
            raise ValueError(f"{name}: {num} has {len(a)} rounds, {den} {len(b)}")
        out[name] = [x / y if y else float("nan") for x, y in zip(a, b)]
    return out


@dataclass(frozen=True)
class Target:
    """A target on a figure: ``key op threshold``, ``op`` being ``>=`` or ``<=``."""

    key: str
    op: str
    threshold: float
    what: str = ""

    def __post_init__(self):
        if self.op not in (">=", "<="):
            raise ValueError(f"op must be '>=' or '<=', not {self.op!r}")

    def holds(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def verdict(self, spread: Spread) -> str:
        """``met`` (median and whole spread on the target's side), ``median only`` or ``missed``."""
        worst = spread.low if self.op == ">=" else spread.high
        if self.holds(spread.median) and self.holds(worst):
            return MET
        return MEDIAN_ONLY if self.holds(spread.median) else MISSED

    @property
    def name(self) -> str:
        return f"{self.key} {self.op} {self.threshold:g}"


def summary(figures: Mapping[str, Sequence[float]], digits: int = 4) -> dict[str, float]:
    """``{key: median, key_min: ..., key_max: ...}`` for every measured figure."""
    out: dict[str, float] = {}
    for key, values in figures.items():
        spread = Spread.of(values)
        out[key] = round(spread.median, digits)
        out[f"{key}_min"] = round(spread.low, digits)
        out[f"{key}_max"] = round(spread.high, digits)
    return out


# --- one benchmark run ---------------------------------------------------------------------------------------

def NO_WARMUP() -> None:
    """An arm's ``warm`` for a measure that needs no separate warm-up run (memory; a run that discards its own
    first part)."""


@dataclass
class Arm:
    """One side of a comparison: ``run()`` measures once and returns its figures (a number is taken as the
    figure named like the arm); ``warm()`` is what a discarded warm-up runs (default: ``run``;
    :func:`NO_WARMUP`: none)."""

    name: str
    run: Callable[[], Mapping[str, float] | float]
    warm: Callable[[], object] | None = None


def parser(doc: str, *, repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP) -> argparse.ArgumentParser:
    """An argument parser with the options every bench script has (``--repeats``, ``--warmup``, ``--order``,
    ``--results``); the script adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("measuring (bench/common.py)")
    g.add_argument("--repeats", type=int, default=repeats,
                   help=f"measured rounds; each round runs every arm once, interleaved (see --order), and each "
                        f"figure and ratio is reported as the median over the rounds with its min-max spread "
                        f"(default {repeats})")
    g.add_argument("--warmup", type=int, default=warmup,
                   help=f"discarded warm-up runs of each arm before the first round (default {warmup})")
    g.add_argument("--order", choices=ORDERS, default="abba",
                   help="abba: the arms' order reverses every other round (default); abab: the same order")
    g.add_argument("--results", type=Path, default=None,
                   help="also append the final JSON line to this file (make bench: bench/results/<date>.jsonl)")
    return p


class Bench:
    """One run of a bench script: prerequisites and the load at the start, interleaved rounds, and at the end
    the figures' medians and spreads, the targets' verdicts, the load again and the JSON line."""

    def __init__(self, name: str, args: argparse.Namespace, needs: Sequence[Need] = (), *, out=None):
        if args.repeats < 1 or args.warmup < 0:
            raise SystemExit(f"bench/{name}.py: --repeats must be >= 1 and --warmup >= 0")
        self.name, self.args, self.needs = name, args, list(needs)
        self.out = out or sys.stdout
        self.started = time.monotonic()
        self.load_start: float | None = None  # set by start()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def start(self) -> "Bench":
        """Check every prerequisite (exit 2 with one line naming what is missing and how to get it) and
        report the load average."""
        absent = missing(self.needs)
        if absent:
            print(f"bench/{self.name}.py: missing " + "; ".join(f"{n.what} ({n.fix})" for n in absent),
                  file=sys.stderr, flush=True)
            raise SystemExit(EXIT_PREREQUISITE)
        settle(self.say)
        self.load_start, lines = load_report("start")
        for line in lines:
            self.say(line)
        return self

    def rounds(self, arms: Sequence[Arm]) -> Figures:
        """Run ``--warmup`` discarded runs of each arm, then ``--repeats`` rounds in ``--order``; returns each
        figure's values, one per round."""
        by_name = {arm.name: arm for arm in arms}
        warmed = [arm for arm in arms if arm.warm is not NO_WARMUP]
        if self.args.warmup and warmed:
            cold = [arm.name for arm in arms if arm.warm is NO_WARMUP]
            self.say(f"warm-up: {self.args.warmup} run(s) of {', '.join(a.name for a in warmed)}, discarded"
                     + (f" ({', '.join(cold)}: no separate warm-up)" if cold else ""))
            for _ in range(self.args.warmup):
                for arm in warmed:
                    (arm.warm or arm.run)()
        figures: Figures = {}
        plan = schedule(list(by_name), self.args.repeats, self.args.order)
        for r, names in enumerate(plan, 1):
            for name in names:
                t0 = time.monotonic()
                got = by_name[name].run()
                got = {name: got} if isinstance(got, (int, float)) else dict(got)
                for key, value in got.items():
                    figures.setdefault(key, []).append(float(value))
                shown = ", ".join(f"{k} {v:.4g}" if k != name else f"{v:.4g}" for k, v in got.items())
                self.say(f"round {r}/{len(plan)} {name}: {shown} ({time.monotonic() - t0:.1f} s)")
        return figures

    def finish(self, figures: Mapping[str, Sequence[float]], *, ratios: Mapping[str, tuple[str, str]] | None = None,
               once: Mapping[str, float] | None = None, constants: Mapping[str, object] | None = None,
               targets: Sequence[Target] = ()) -> dict:
        """Print the medians and spreads, the targets' verdicts and the load at the end, then the JSON line
        (last line of output, also appended to ``--results``); returns it as a dict.

        ``figures`` are measured once per round, ``ratios`` are taken from them round by round, ``once`` are
        measured a single time (set-up costs: no spread), ``constants`` describe the run.
        """
        measured = {**figures, **per_round_ratios(figures, ratios or {})}
        self._print_table(measured, once or {})
        verdicts = self._print_verdicts(measured, targets)
        load_end, lines = load_report("end", warn=False)
        for line in lines:
            self.say(line)
        line = {**summary(measured), **{k: round(v, 4) for k, v in (once or {}).items()},
                **(constants or {}), "repeats": self.args.repeats, "warmup": self.args.warmup,
                "order": self.args.order, "targets": verdicts, "bench": self.name,
                "date": datetime.date.today().isoformat(), "cpus": cpus(),
                "load_start": None if self.load_start is None else round(self.load_start, 2), "load_end": round(load_end, 2),
                "seconds": round(time.monotonic() - self.started, 1)}
        text = json.dumps(line)
        if self.args.results:
            self.args.results.parent.mkdir(parents=True, exist_ok=True)
            with open(self.args.results, "a") as f:
                f.write(text + "\n")
        self.say(text)
        return line

    def _print_table(self, measured: Mapping[str, Sequence[float]], once: Mapping[str, float]) -> None:
        width = max(map(len, [*measured, *once, "figure"]))
        self.say(f"{'figure':<{width}}  {'median':>12}  {'min':>12}  {'max':>12}   "
                 f"({self.args.repeats} rounds, {self.args.warmup} warm-up discarded)")
        for key, values in measured.items():
            s = Spread.of(values)
            self.say(f"{key:<{width}}  {s.median:>12.4g}  {s.low:>12.4g}  {s.high:>12.4g}")
        for key, value in once.items():
            self.say(f"{key:<{width}}  {value:>12.4g}  (measured once)")

    def _print_verdicts(self, measured: Mapping[str, Sequence[float]], targets: Sequence[Target]) -> dict:
        verdicts = {}
        for target in targets:
            if target.key not in measured:
                continue
            s = Spread.of(measured[target.key])
            verdicts[target.name] = target.verdict(s)
            self.say(f"target {target.name}{f' ({target.what})' if target.what else ''}: median {s.median:.4g}, "
                     f"spread {s.low:.4g}..{s.high:.4g} -> {verdicts[target.name]}")
        return verdicts
