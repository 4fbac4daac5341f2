"""bench/detect_quality.py's comparison on synthetic vectors (its model training and embedding are the jobs'
own, tested elsewhere): every arm and label count reported, ties counted on the stored score and the logit."""

from __future__ import annotations

import numpy as np

from bench import detect_quality as dq
from bench.probe_recipe import synthetic_vectors


def test_ties_are_counted_on_the_float32_score_and_on_the_logit():
    score_ties, logit_ties = dq.top_ties(np.array([40.0, 41.0, 39.0, -3.0]))
    assert score_ties == 0.75 and logit_ties == 0.25  # float32 sigmoid saturates at 1.0; the logits differ


def test_the_comparison_reports_every_arm_label_count_and_target():
    v, classes = synthetic_vectors()
    results = dq.compare(v, classes, repeats=1)
    assert sorted(results) == sorted(dq.COUNTS)
    for n, r in results.items():
        for key in ("probe_p20", "example_p20", "probe_ap", "example_ap"):
            assert len(r[key]) == 30 and all(0.0 <= x <= 1.0 for x in r[key]), (n, key)
        assert 0 < r["prior"] < 0.05 and 0 < r["tied_logit"] <= r["tied_score"] <= 1
    line = dq.report(results, top1=0.5, repeats=1)
    assert line["bench"] == "detect_quality" and set(line["median"]) == set(dq.COUNTS)
    assert len(line["targets"]) == 2 * len(dq.COUNTS) and set(line["targets"].values()) <= {"met", "missed"}
    # on these vectors the probe finds the class far above its prior at 30 labels
    assert line["median"][30]["probe_p20"] > 3 * line["median"][30]["prior"]
