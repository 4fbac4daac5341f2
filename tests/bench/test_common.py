"""The benchmarks' shared machinery (bench/common.py) on fake timings, and every bench script's --help.

A benchmark is not a test: nothing here times anything. These check that the rounds interleave, that
warm-ups are discarded, that ratios are taken round by round, that the median and spread and the target
verdicts are right, that the JSON line keeps its keys, and that a missing prerequisite stops a script at
once with one line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time

import pytest

from bench import common
from bench.common import Arm, Bench, Spread, Target
from tests.helpers import ROOT

SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "common")


def args(**kw) -> argparse.Namespace:
    return common.parser("test").parse_args([f"--{k}={v}" for k, v in kw.items()])


def test_schedule_reverses_every_other_round_for_abba_and_keeps_the_order_for_abab():
    assert common.schedule(["a", "b", "c"], 3, "abba") == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert common.schedule(["a", "b"], 3, "abab") == [["a", "b"]] * 3
    with pytest.raises(ValueError):
        common.schedule(["a"], 0)
    with pytest.raises(ValueError):
        common.schedule(["a"], 2, "random")


def test_spread_is_the_median_and_the_range():
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)
    assert Spread.of([4.0, 1.0, 2.0, 3.0]) == Spread(2.5, 1.0, 4.0)
    with pytest.raises(ValueError):
        Spread.of([])


@pytest.mark.parametrize("spread, at_least, at_most", [
    (Spread(0.93, 0.91, 0.95), common.MET, common.MISSED),
    (Spread(0.93, 0.85, 0.95), common.MEDIAN_ONLY, common.MISSED),
    (Spread(0.88, 0.85, 0.95), common.MISSED, common.MEDIAN_ONLY),
    (Spread(0.80, 0.70, 0.85), common.MISSED, common.MET),
])
def test_target_verdict_needs_the_whole_spread_on_its_side_to_be_met(spread, at_least, at_most):
    assert Target("ratio", ">=", 0.90).verdict(spread) == at_least
    assert Target("ratio", "<=", 0.90).verdict(spread) == at_most
    with pytest.raises(ValueError):
        Target("ratio", ">", 0.9)


def test_ratios_are_taken_round_by_round_not_between_medians():
    figures = {"e2e": [9.0, 4.0, 10.0], "model": [10.0, 5.0, 20.0]}
    ratios = common.per_round_ratios(figures, {"ratio": ("e2e", "model")})
    assert ratios == {"ratio": [0.9, 0.8, 0.5]}
    assert Spread.of(ratios["ratio"]).median == 0.8  # the ratio of the medians would be 0.9
    with pytest.raises(ValueError):
        common.per_round_ratios({"a": [1.0], "b": [1.0, 2.0]}, {"r": ("a", "b")})


class FakeArm:
    """An arm that returns scripted figures and logs when it ran."""

    def __init__(self, name: str, values: list[float], log: list[str]):
        self.name, self.values, self.log = name, list(values), log

    def run(self) -> float:
        self.log.append(self.name)
        return self.values.pop(0)

    def warm(self) -> None:
        self.log.append(f"warm {self.name}")


def test_rounds_discard_warm_ups_and_interleave_the_arms():
    log: list[str] = []
    a, b = FakeArm("a", [1.0, 2.0, 3.0], log), FakeArm("b", [10.0, 20.0, 30.0], log)
    memory = FakeArm("m", [5.0, 6.0, 7.0], log)
    out = io.StringIO()
    bench = Bench("fake", args(repeats=3, warmup=2), out=out)
    figures = bench.rounds([Arm("a", a.run, a.warm), Arm("b", b.run, b.warm),
                            Arm("m", memory.run, common.NO_WARMUP)])
    assert log == ["warm a", "warm b"] * 2 + ["a", "b", "m", "m", "b", "a", "a", "b", "m"]
    assert figures == {"a": [1.0, 2.0, 3.0], "b": [10.0, 20.0, 30.0], "m": [5.0, 6.0, 7.0]}
    assert "warm-up: 2 run(s) of a, b, discarded (m: no separate warm-up)" in out.getvalue()


def test_an_arm_without_its_own_warm_up_runs_itself_once_discarded():
    values = iter([99.0, 1.0, 2.0])
    figures = Bench("fake", args(repeats=2, warmup=1), out=io.StringIO()).rounds(
        [Arm("x", lambda: {"x_ms": next(values), "x_recall": 1.0})])
    assert figures == {"x_ms": [1.0, 2.0], "x_recall": [1.0, 1.0]}


def test_finish_prints_medians_spreads_and_verdicts_and_ends_with_the_json_line(tmp_path):
    out = io.StringIO()
    results = tmp_path / "results" / "day.jsonl"
    bench = Bench("fake", args(repeats=3, results=results), out=out)
    figures = {"e2e_img_s": [9.0, 4.0, 10.0], "model_img_s": [10.0, 5.0, 20.0]}
    line = bench.finish(figures, ratios={"ratio": ("e2e_img_s", "model_img_s")}, once={"build_s": 1.23456},
                        constants={"n_images": 3}, targets=[Target("ratio", ">=", 0.75)])
    printed = out.getvalue().strip().splitlines()
    assert json.loads(printed[-1]) == line
    assert (line["ratio"], line["ratio_min"], line["ratio_max"]) == (0.8, 0.5, 0.9)
    assert (line["e2e_img_s"], line["e2e_img_s_min"], line["e2e_img_s_max"]) == (9.0, 4.0, 10.0)
    assert line["repeats"] == 3 and line["n_images"] == 3 and line["build_s"] == 1.2346
    assert "build_s_min" not in line and "n_images_min" not in line
    assert line["targets"] == {"ratio >= 0.75": common.MEDIAN_ONLY}
    assert any(row.startswith("load average at the end") for row in printed)
    bench.finish(figures)
    assert [json.loads(x)["bench"] for x in results.read_text().splitlines()] == ["fake", "fake"]


def test_a_missing_prerequisite_stops_the_run_with_one_line(tmp_path, capsys):
    needs = [common.module_need("no_such_module_rsclip"), common.path_need(tmp_path / "absent"),
             common.path_need(tmp_path)]  # an empty folder counts as missing data
    assert [n.what for n in common.missing(needs)] == [n.what for n in needs]
    with pytest.raises(SystemExit) as stop:
        Bench("fake", args(), needs=needs[:1]).start()
    assert stop.value.code == common.EXIT_PREREQUISITE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_module_rsclip" in err[0] and "make install" in err[0]


def test_the_load_average_is_reported_and_a_busy_machine_warned_about(monkeypatch):
    # a busy machine cannot be made on demand in a test: the load average is set
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.4, 0.3))
    load, lines = common.load_report("start")
    assert load == 0.5 and len(lines) == 1 and "0.50 0.40 0.30" in lines[0]
    monkeypatch.setattr(os, "getloadavg", lambda: (common.cpus() + 3.0, 1.0, 1.0))
    _, lines = common.load_report("start")
    assert len(lines) == 2 and lines[1].startswith("WARNING: the machine is busy")
    _, lines = common.load_report("end", warn=False)  # the end's load is the benchmark's own work
    assert len(lines) == 1


def test_a_script_waits_for_the_load_of_the_one_before_to_decay(monkeypatch):
    loads = iter([5.0, 5.0, 3.0, 0.5, 0.5])
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 1.0, 1.0))
    monkeypatch.setattr(common, "cpus", lambda: 2)
    said = []
    common.settle(said.append, limit_s=60, poll_s=0.01)
    assert len(said) == 1 and "(5.00) to settle" in said[0]
    assert next(loads) == 0.5  # polled until the load fell below the cores, then stopped
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    common.settle(said.append, limit_s=0.05, poll_s=0.01)  # never settles: gives up at the limit
    assert len(said) == 2


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_documents_repeats_in_its_help(script):
    res = subprocess.run([sys.executable, f"bench/{script}.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--repeats" in res.stdout and "median" in res.stdout


def test_query_without_faiss_stops_at_once_with_one_line_telling_how_to_install_it():
    # FAISS is made unimportable in the child (it may be installed here): the rest runs as it would
    blocked = ("import runpy, sys; sys.modules['faiss'] = None; sys.argv = ['bench/query.py']; "
               "runpy.run_path('bench/query.py', run_name='__main__')")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 10
    assert res.returncode == common.EXIT_PREREQUISITE
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "faiss" in lines[0] and "make install" in lines[0]
    assert res.stdout == ""
