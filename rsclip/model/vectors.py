"""Small numeric helpers on embedding rows, shared by search, evaluation and detection."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (float64; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# Example search's query: q = 2 * mean(P) - NEGATIVE_WEIGHT * mean(N) (GeoVibes' choice), for search and detection.
POSITIVE_WEIGHT, NEGATIVE_WEIGHT = 2.0, 1.0


def example_direction(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray | None:
    """``normalise(POSITIVE_WEIGHT * mean(P) - NEGATIVE_WEIGHT * mean(N))`` of example rows (no negatives:
    ``normalise(mean(P))``); None when the two cancel out (no direction left)."""
    vector = POSITIVE_WEIGHT * positives.mean(axis=0)
    if len(negatives):
        vector = vector - NEGATIVE_WEIGHT * negatives.mean(axis=0)
    norm = float(np.linalg.norm(vector))
    return vector / norm if np.isfinite(norm) and norm >= 1e-6 else None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
