"""Synthetic tile rows for search tests: clustered unit vectors (an archive with many scene types) and random
1-degree WGS84 boxes; a resident copy of a table held in the tier a test asks for."""

from __future__ import annotations

import numpy as np


def unit_centers(rng, n: int, dim: int) -> np.ndarray:
    """``n`` random unit vectors of ``dim`` dimensions: the centres of :func:`clustered`'s scene types."""
    centers = rng.normal(size=(n, dim))
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def clustered(rng, n: int, centers: np.ndarray, spread: float = 0.6) -> np.ndarray:
    """``n`` unit vectors: a random row of ``centers`` plus noise of norm ~``spread``."""
    dim = centers.shape[1]
    v = centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, dim)) * spread / np.sqrt(dim)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def tile_rows(start: int, vectors: np.ndarray, rng) -> dict:
    """Tile columns for ``vectors``: uris ``s3://archive/scene-<start + i>.tif``, 224 px windows, random boxes."""
    n = len(vectors)
    lon, lat = rng.uniform(-170, 170, n), rng.uniform(-80, 80, n)
    return dict(uri=[f"s3://archive/scene-{i}.tif" for i in range(start, start + n)], x=[0] * n, y=[0] * n,
                width=[224] * n, height=[224] * n, vector=vectors, lon_min=lon, lat_min=lat,
                lon_max=lon + 1.0, lat_max=lat + 1.0)


def resident_in_tier(monkeypatch, db, tier: str) -> None:
    """Make ``resident=True`` searches of ``db``'s tile table go through a fresh resident cache whose limit
    gives it the tier ``tier`` (``memory_table.MEMORY`` or ``COMPACT``)."""
    from rsclip.search import memory_table, searchers
    from rsclip.table import datasets, tiles

    dataset = datasets.dataset_of(tiles.open_table(db))
    cache = memory_table.ResidentCache(max_bytes=memory_table.estimated_bytes(dataset, tier))
    monkeypatch.setattr(memory_table, "cache", cache)
    monkeypatch.setattr(searchers, "resident_table", cache.get)
