"""The linear probe of a detection job: a label set's embeddings -> a logistic regression -> one weight vector.

Training examples are the label set's positives and negatives (their stored embeddings) plus ``background``
tiles drawn at random from the table as extra negatives (GeoVibes' trick: most of an archive is not the
target; :data:`DEFAULT_BACKGROUND` by default). The recipe (:data:`PROBE_FORMAT` 2):

- the embedding's dimensions are standardised with the mean and spread of a random sample of the *table*
  (:data:`STATS_SAMPLE` tiles), never of the handful of labelled vectors, whose spread is a fraction of the
  table's and inflated the logit of any tile unlike the labels (format 1);
- a logistic regression (``C``) weighs the positives as much as all negatives together, and the background
  draw as much as the labelled negatives (as many positives' worth when there are none);
- its logit is blended with the example-search vector of the same labels (:func:`rsclip.search.examples.combine`),
  scaled to the same spread over the table sample and centred on its mean: measured on RSICD/AID scenes the
  blend's precision@20 was at least example search's at 3, 10 and 30 labels (``bench/probe_recipe.py``).

Every step is linear, so the probe folds into one ``(w, b)`` and scoring a tile is one dot product:
``logit = vector @ w + b``, ``score = sigmoid(logit)``.

Quality is reported by stratified k-fold cross-validation on the training examples (``min(5, fewest examples
of a class)`` folds; none with fewer than two of either): average precision of the out-of-fold logits beside
its chance level (the share of positives), and precision@k with ``k`` no larger than the positives, so a
perfect ranking reads 1.0 whatever the class balance. The held-out negatives are mostly background tiles drawn
from the table, so the figures estimate how the probe ranks the table's unlabelled tiles
(:func:`quality_sentence` says so to the analyst).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from rsclip.model.vectors import example_direction
from rsclip.table import datasets, labels, rows, tiles
from rsclip.errors import InvalidInput, LimitExceeded

MAX_BACKGROUND = 100_000
DEFAULT_BACKGROUND = 200  # background negatives drawn by default (the job's --background)
STATS_SAMPLE = 2_000  # tiles of the table whose mean and spread standardise the embedding's dimensions
MAX_CV_FOLDS = 5
PROBE_FORMAT = 2  # part of the model version: bump when the probe's recipe changes
MAX_ITER = 5_000


@dataclass
class TrainingSet:
    """Vectors ``x`` (n, D) and targets ``y`` (1 positive, 0 negative) with the tile ids they come from: the
    positives, then the labelled negatives, then the background draw; ``sample`` is the table sample whose
    statistics scale the dimensions."""

    x: np.ndarray
    y: np.ndarray
    ids: list[str]
    positives: int
    negatives: int
    background: int
    sample: np.ndarray

    def background_mask(self) -> np.ndarray:
        """True for the background rows of ``x``."""
        return np.arange(len(self.y)) >= self.positives + self.negatives


@dataclass
class Probe:
    """A trained probe: ``logit = vector @ weights + bias``, ``score = sigmoid(logit)``; ``metrics`` from
    cross-validation."""

    label: str
    model_version: str
    weights: np.ndarray
    bias: float
    metrics: dict = field(default_factory=dict)

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """Logits for ``(n, D)`` vectors: the float32 dot product, as float64 (what the job stores)."""
        z = np.asarray(vectors, dtype=np.float32) @ self.weights.astype(np.float32) + np.float32(self.bias)
        return z.astype(np.float64)

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities for ``(n, D)`` vectors, float32."""
        return sigmoid(self.logits(vectors))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, float32 and overflow-free."""
    z = np.asarray(z, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def sample_background(table, n: int, exclude: set[str], seed: int) -> tuple[list[str], np.ndarray]:
    """``(ids, vectors)`` of up to ``n`` tiles drawn uniformly without replacement from ``table``, leaving
    out ``exclude`` (the labelled tiles), in random order. Reads only the drawn rows."""
    if n > MAX_BACKGROUND:
        raise LimitExceeded(f"background sample of {n:,} tiles is more than {MAX_BACKGROUND:,}")
    dataset = datasets.dataset_of(table)
    total = dataset.count_rows()
    rng = np.random.default_rng(seed)
    want = min(total, n + len(exclude))
    picked = np.sort(rng.choice(total, size=want, replace=False)) if want else np.zeros(0, dtype=np.int64)
    found = dataset.take(picked.tolist(), columns=[tiles.ID, tiles.VECTOR])
    ids = found.column(tiles.ID).to_pylist()
    vectors = rows.vectors_of(found.column(tiles.VECTOR))
    keep = [i for i in rng.permutation(len(ids)) if ids[i] not in exclude][:n]
    return [ids[i] for i in keep], vectors[keep].astype(np.float32)


def training_set(table, label_frame, *, background: int = DEFAULT_BACKGROUND, seed: int = 0) -> TrainingSet:
    """The examples of a label set (:func:`rsclip.table.labels.read_labels` frame) against ``table``, with
    ``background`` tiles of a random table sample (:data:`STATS_SAMPLE` or more) as extra negatives.

    Raises ``InvalidInput`` when there is no positive, or no negative and no ``background``; ``NotFound``
    when labelled tiles are no longer in the table.
    """
    pos, neg = labels.split_labels(label_frame)
    name = str(label_frame[labels.LABEL].iloc[0]) if len(label_frame) else "?"
    if not pos:
        raise InvalidInput(f"label set {name!r} has no positive tile: label at least one positive")
    if not neg and background <= 0:
        raise InvalidInput(f"label set {name!r} has only positives ({len(pos)}) and no negatives: label some "
                           "negatives, or sample background tiles as negatives (--background N)")
    x = rows.vectors_by_id(table, pos + neg)
    sample_ids, sample = sample_background(table, max(STATS_SAMPLE, background), set(pos) | set(neg), seed)
    bg_ids, bg = sample_ids[:max(background, 0)], sample[:max(background, 0)]
    x = np.concatenate([x, bg]) if len(bg) else x
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg) + len(bg_ids))]).astype(np.int64)
    return TrainingSet(x, y, pos + neg + bg_ids, len(pos), len(neg), len(bg_ids), sample if len(sample) else x)


def example_vector(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray | None:
    """``normalise(2 * mean(P) - mean(N))`` of the unit example vectors (``normalise(mean(P))`` without
    negatives), as example search ranks; None when they cancel out."""
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # noqa: E731
    return example_direction(unit(positives), unit(negatives))


def sample_weights(y: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per-example weights: the background draw weighs as much as the labelled negatives (as the positives
    when there are none), and the positives as much as all negatives."""
    w = np.ones(len(y))
    positive = y == 1
    labelled_negatives = int(((y == 0) & ~background).sum())
    if background.any():
        w[background] = (labelled_negatives or int(positive.sum())) / background.sum()
    w[positive] = w[~positive].sum() / max(int(positive.sum()), 1)
    return w


def table_statistics(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` per dimension of a table sample (a dimension that does not vary: scale 1)."""
    mean, scale = sample.mean(axis=0), sample.std(axis=0)
    return mean.astype(np.float64), np.where(scale > 1e-8, scale, 1.0).astype(np.float64)


def fit_examples(x: np.ndarray, y: np.ndarray, background: np.ndarray, sample: np.ndarray, *, c: float = 1.0,
                 seed: int = 0) -> tuple[np.ndarray, float]:
    """``(w, b)`` of the module's recipe trained on examples ``x``, ``y`` (``background``: the mask of the
    background draw) with the dimensions scaled by the statistics of the table ``sample``."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = table_statistics(sample)
    lr = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)
    lr.fit((x - mean) / scale, y, sample_weight=sample_weights(y, background))
    w = lr.coef_[0] / scale
    b = float(lr.intercept_[0] - np.dot(mean / scale, lr.coef_[0]))
    q = example_vector(x[y == 1], x[(y == 0) & ~background])
    on_sample = sample @ w
    if q is not None and float(np.std(sample @ q)) > 1e-12:  # the example term, at the probe's spread
        ratio = float(np.std(on_sample)) / float(np.std(sample @ q))
        w, b = w + ratio * q, b - ratio * float(np.mean(sample @ q))
    return w.astype(np.float32), float(b)


def fit(data: TrainingSet, *, c: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """``(w, b)``: the probe trained on all of ``data`` (:func:`fit_examples`), folded into one linear map."""
    return fit_examples(data.x, data.y, data.background_mask(), data.sample, c=c, seed=seed)


def cross_validate(data: TrainingSet, *, c: float = 1.0, seed: int = 0, k: int = 10) -> dict:
    """Cross-validated ``cv_ap`` (average precision), its chance level ``prior`` and ``precision_at_k`` on
    ``data`` (module doc); the first two None when a class has fewer than two examples. ``k`` is capped by
    the number of positives."""
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold

    fewest = int(min(data.y.sum(), len(data.y) - data.y.sum()))
    k = int(max(1, min(k, data.y.sum())))  # a perfect ranking reaches 1.0
    prior = round(float(data.y.mean()), 4) if len(data.y) else None
    if fewest < 2:
        return {"cv_ap": None, "precision_at_k": None, "k": k, "folds": 0, "prior": prior}
    folds = min(MAX_CV_FOLDS, fewest)
    scores = np.zeros(len(data.y))
    background = data.background_mask()
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(data.x, data.y):
        w, b = fit_examples(data.x[train], data.y[train], background[train], data.sample, c=c, seed=seed)
        scores[test] = data.x[test] @ w + b
    top = np.argsort(-scores, kind="stable")[:k]
    return {"cv_ap": round(float(average_precision_score(data.y, scores)), 4),
            "precision_at_k": round(float(data.y[top].mean()), 4), "k": k, "folds": folds, "prior": prior}


def quality_sentence(metrics: dict) -> str:
    """What a probe's cross-validated metrics (:func:`cross_validate`, with the example counts) say, in words."""
    counts = (f"{metrics.get('positives', 0)} positives, {metrics.get('negatives', 0)} negatives, "
              f"{metrics.get('background', 0)} background tiles")
    if metrics.get("cv_ap") is None:
        return f"{counts}: too few of a class to cross-validate (label at least two positives and two negatives)"
    return (f"{counts}; cross-validated average precision {metrics['cv_ap']:.2f} (chance: "
            f"{metrics.get('prior') or 0:.2f}), precision@{metrics['k']} {metrics['precision_at_k']:.2f} (the "
            f"share of positives among the {metrics['k']} held-out examples ranked highest; 1.0 is perfect): an "
            "estimate of how well the table's unlabelled tiles are ranked")
def model_version(table, label_frame, settings: dict) -> str:
    """A short hash naming the probe a run trains: the table's model and weights, the label set's content
    and the probe's settings, and the table's size (which changes the table sample and the draw). The same
    inputs give the same version, so a rerun resumes; any change gives a new one, which rescored every tile."""
    model, dim = tiles.table_model(table)
    weights = tiles.table_weights(table)
    content = sorted(zip(label_frame[tiles.ID].astype(str), label_frame[labels.VALUE].astype(int)))
    payload = {"format": PROBE_FORMAT, "model": model, "dim": dim,
               "weights": weights.weights_sha256 if weights is not None else None,
               "labels": content, "settings": settings,
               "rows": datasets.dataset_of(table).count_rows()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_probe(table, label: str, label_frame, *, background: int = DEFAULT_BACKGROUND, c: float = 1.0,
                seed: int = 0, k: int = 10) -> Probe:
    """Train and cross-validate the probe of ``label`` (see the module); metrics carry the example counts."""
    if not (c > 0 and np.isfinite(c)):
        raise InvalidInput(f"regularisation C must be a positive number, got {c}")
    data = training_set(table, label_frame, background=background, seed=seed)
    weights, bias = fit(data, c=c, seed=seed)
    metrics = {"positives": data.positives, "negatives": data.negatives, "background": data.background,
               **cross_validate(data, c=c, seed=seed, k=k)}
    version = model_version(table, label_frame, {"background": background, "c": c, "seed": seed})
    return Probe(label, version, weights, bias, metrics)


__all__ = ["DEFAULT_BACKGROUND", "Probe", "TrainingSet", "cross_validate", "example_vector", "fit", "fit_examples",
           "model_version", "quality_sentence", "sample_background", "sample_weights", "table_statistics",
           "sigmoid", "train_probe", "training_set"]
