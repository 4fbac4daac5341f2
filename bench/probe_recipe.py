"""The probe's recipe against example search and the old probe: precision@20 over unlabelled tiles (issue 27.1).

    python bench/probe_recipe.py --db DB            # a table of the shared RSICD/AID scenes (class = file prefix)
    python bench/probe_recipe.py --synthetic        # class-structured synthetic unit vectors, 30 classes x 70

For every class and label count n in 3, 10, 30 (n positives and n negatives, 5 seeded draws; 200 background
tiles for the probes that take them) it ranks every tile not labelled and prints the mean and median
precision@20 of: ``example`` (``normalise(2 mean P - mean N)``, rsclip.search.examples), ``probe`` (the
detection job's recipe, :func:`rsclip.detect.probe.fit_examples`) and ``old`` (format 1: standardised on the
labelled vectors, no background). A random model carries little signal: say which vectors a figure comes from.

``--suggest``: for n in 3 and 10, the probe's precision@20 after one more round of labels, the 5 top-ranked
and the 5 least certain unlabelled tiles (what ``rsclip suggest -k 5`` lists) labelled by their true class,
against 10 more tiles drawn at random and labelled the same way; all three on the tiles no arm labelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsclip.detect.probe import example_vector, fit_examples  # noqa: E402

COUNTS, DRAWS, BACKGROUND, STATS, K = (3, 10, 30), 5, 200, 2000, 20


def table_vectors(db: str) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, classes)`` of a tile table of RSICD/AID scenes."""
    from rsclip.table import tiles

    frame = tiles.open_table(db).to_pandas()
    classes = frame[tiles.URI].map(lambda u: os.path.basename(u).rsplit("_", 1)[0]).to_numpy()
    return np.stack(frame[tiles.VECTOR].to_numpy()).astype(np.float32), classes


def synthetic_vectors(seed: int = 5, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """30 classes x 70 unit vectors: a weak class centre, noise and an offset shared by all (as CLIP's)."""
    rng = np.random.default_rng(seed)
    classes = np.repeat(np.arange(30), 70)
    v = rng.normal(size=(30, dim))[classes] * 0.35 + rng.normal(size=(len(classes), dim)) + rng.normal(size=dim) * 2
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), classes.astype(str)


def old_probe(x: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Format 1: StandardScaler fitted on the labelled vectors, balanced logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
    return model.fit(x, y).decision_function(v)


def arms(v: np.ndarray, pos: np.ndarray, neg: np.ndarray, rng) -> dict[str, np.ndarray]:
    """The scores of every tile under each arm for one draw of labels."""
    labelled = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(int)
    return {"example": v @ example_vector(v[pos], v[neg]), "probe": probe_scores(v, pos, neg, rng),
            "old": old_probe(v[np.r_[pos, neg]], labelled, v)}


def probe_scores(v: np.ndarray, pos: np.ndarray, neg: np.ndarray, rng) -> np.ndarray:
    """The probe's logits of every tile for labels ``pos``, ``neg`` (the recipe of the detection job)."""
    rest = np.setdiff1d(np.arange(len(v)), np.r_[pos, neg])
    sample = v[rng.choice(rest, min(STATS, len(rest)), replace=False)]
    x = np.concatenate([v[pos], v[neg], sample[:BACKGROUND]])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg) + BACKGROUND)].astype(int)
    w, b = fit_examples(x, y, np.arange(len(y)) >= len(pos) + len(neg), sample)
    return v @ w + b


def precision(scores: np.ndarray, labelled: np.ndarray, classes: np.ndarray, name: str) -> float:
    """Precision@K of ``scores`` over the tiles not ``labelled``."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[labelled] = -np.inf
    return float(np.mean(classes[np.argsort(-s, kind="stable")[:K]] == name))


def one_more_round(v: np.ndarray, classes: np.ndarray, draws: int = DRAWS) -> dict:
    """Print precision@20 before and after labelling 10 suggested or 10 random tiles (module doc); returns the
    medians by label count and arm."""
    medians = {}
    for n in COUNTS[:2]:
        got: dict[str, list[float]] = {"before": [], "suggested": [], "random": []}
        for name in sorted(set(classes)):
            members, others = np.flatnonzero(classes == name), np.flatnonzero(classes != name)
            for draw in range(draws):
                rng = np.random.default_rng(draw)
                pos, neg = rng.choice(members, n, replace=False), rng.choice(others, n, replace=False)
                z = probe_scores(v, pos, neg, np.random.default_rng(draw))
                free = np.setdiff1d(np.arange(len(v)), np.r_[pos, neg])
                top = free[np.argsort(-z[free], kind="stable")[:5]]
                rest = np.setdiff1d(free, top)
                picks = {"suggested": np.r_[top, rest[np.argsort(np.abs(z[rest]), kind="stable")[:5]]],
                         "random": rng.choice(free, 10, replace=False)}
                # every arm is measured on the same tiles: none labelled by any arm (a labelled positive
                # would otherwise leave the pool and lower the precision of the arm that found it)
                held = np.r_[pos, neg, *picks.values()]
                got["before"].append(precision(z, held, classes, name))
                for arm, pick in picks.items():
                    p2, n2 = np.r_[pos, pick[classes[pick] == name]], np.r_[neg, pick[classes[pick] != name]]
                    z2 = probe_scores(v, p2, n2, np.random.default_rng(draw))
                    got[arm].append(precision(z2, held, classes, name))
        print(f"labels {n:>2} each, then 10 more: " + "  ".join(
            f"{arm} mean {np.mean(r):.3f} median {np.median(r):.3f}" for arm, r in got.items()), flush=True)
        medians[n] = {arm: float(np.median(r)) for arm, r in got.items()}
    return medians


def main() -> None:
    """Print one line per label count: mean and median precision@20 of each arm, and the class prior."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--suggest", action="store_true", help="one more round of labels: suggested vs random")
    parser.add_argument("--repeats", type=int, default=DRAWS,
                        help="seeded draws of labels per class and label count; each figure is the mean and median "
                             "over classes x draws (the last line: the medians as one JSON object)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    v, classes = synthetic_vectors() if args.synthetic or not args.db else table_vectors(args.db)
    if args.suggest:
        print(json.dumps({"bench": "probe_recipe", "suggest_median_p20": one_more_round(v, classes, args.repeats)}))
        return
    medians = {}
    for n in COUNTS:
        got: dict[str, list[float]] = {}
        for name in sorted(set(classes)):
            members, others = np.flatnonzero(classes == name), np.flatnonzero(classes != name)
            for draw in range(args.repeats):
                rng = np.random.default_rng(draw)
                pos, neg = rng.choice(members, n, replace=False), rng.choice(others, n, replace=False)
                for arm, scores in arms(v, pos, neg, rng).items():
                    got.setdefault(arm, []).append(precision(scores, np.r_[pos, neg], classes, name))
        prior = (np.mean([np.sum(classes == c) for c in set(classes)]) - n) / (len(v) - 2 * n)
        print(f"labels {n:>2} each: prior {prior:.3f}  " + "  ".join(
            f"{arm} mean {np.mean(r):.3f} median {np.median(r):.3f}" for arm, r in got.items()), flush=True)
        medians[n] = {"prior": float(prior), **{arm: float(np.median(r)) for arm, r in got.items()}}
    print(json.dumps({"bench": "probe_recipe", "median_p20": medians}))


if __name__ == "__main__":
    main()
