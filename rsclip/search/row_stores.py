"""Where a resident copy's vectors are, by tier (:mod:`rsclip.search.memory_table`): in memory as float32
(:class:`MemoryRows`, the ``memory`` tier), or read from the table version on demand (:class:`TableRows`,
``compact``). Both score rows by position against a unit query."""

from __future__ import annotations

import numpy as np

from rsclip.table import tiles
from rsclip.table.rows import vectors_of

SCAN_ROWS = 65_536  # rows scored (or read) at a time: a bounded working set
MEMORY, COMPACT = "memory", "compact"


class MemoryRows:
    """The ``memory`` tier's vectors: float32, by position."""

    kind = MEMORY

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        self._norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12) if len(vectors) else np.zeros(0, np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self._norms.nbytes)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at ``positions``, in that order."""
        return self.vectors[positions]

    def scores(self, positions: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, None]:
        """Cosines of the unit vector ``q`` with the rows at ``positions`` (float64), and None: the vectors are
        at hand (the compact tier's are not)."""
        n = len(self.vectors)
        if len(positions) > n // 4:  # streaming every row beats gathering a large share of them
            dots = np.empty(n, dtype=np.float32)
            for start in range(0, n, SCAN_ROWS):
                dots[start : start + SCAN_ROWS] = self.vectors[start : start + SCAN_ROWS] @ q
            dots = dots[positions]
        else:
            dots = np.empty(len(positions), dtype=np.float32)
            for start in range(0, len(positions), SCAN_ROWS):  # bounded working set: gathered rows are copies
                dots[start : start + SCAN_ROWS] = self.vectors[positions[start : start + SCAN_ROWS]] @ q
        return dots.astype(np.float64) / self._norms[positions], None


class TableRows:
    """The ``compact`` tier's vectors: read from the table version on demand, by position (Lance's ``take``)."""

    kind = COMPACT
    nbytes = 0

    def __init__(self, dataset):
        self.dataset = dataset

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at ``positions`` (at most SCAN_ROWS of them), in that order, read now."""
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")  # Lance reads ascending positions faster
        found = vectors_of(self.dataset.take(positions[order], columns=[tiles.VECTOR]).column(tiles.VECTOR))
        vectors = np.empty_like(found)
        vectors[order] = found
        return vectors

    def scores(self, positions: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Cosines of the unit vector ``q`` with the rows at ``positions`` (float64), their vectors read now, and
        those vectors when one read held them all (at most SCAN_ROWS rows: the answer need not read them again;
        each read of a few rows costs a few ms at 10M rows, BENCHMARKS.md, Query)."""
        scores, vectors = np.empty(len(positions), dtype=np.float64), None
        for start in range(0, len(positions), SCAN_ROWS):
            vectors = self.at(positions[start : start + SCAN_ROWS])
            norms = np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
            scores[start : start + len(vectors)] = (vectors @ q).astype(np.float64) / norms
        return scores, vectors if len(positions) <= SCAN_ROWS else None


__all__ = ["COMPACT", "MEMORY", "SCAN_ROWS", "MemoryRows", "TableRows"]
