"""Search over shards: one archive's tiles split across tables (by region, year or fragment range), each searched
by its own searcher, the answers merged into one top k.

This is how rsclip serves a table larger than one search host holds (README, Scaling out): each host keeps the
resident copy of its shards, answers the top k of its own rows under the same filters, and a front merges
them. Every shard ranks its candidates by their exact cosines, so the merge is a sort by score: with exact
searches the merged answer is exactly the one table's answer (tests/search/test_shards.py), and with the
index it is as good as each shard's own answer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

from rsclip.errors import InvalidInput
from rsclip.search.filters import Filters
from rsclip.search.searchers import MAX_K, SCORE, Searcher, search
from rsclip.table import tiles

MAX_SHARDS = 64


def search_shards(searchers: Sequence[Searcher], vector: np.ndarray, k: int, filters: Filters = Filters(), *,
                  exact: bool = False) -> pd.DataFrame:
    """The ``k`` best rows of all ``searchers``' tables under ``filters``, best first (ties by tile id), with a
    ``shard`` column (the index of the searcher that answered each row); shards are searched concurrently."""
    if not 1 <= len(searchers) <= MAX_SHARDS:
        raise InvalidInput(f"search_shards needs 1 to {MAX_SHARDS} searchers, got {len(searchers)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    with ThreadPoolExecutor(min(len(searchers), 8)) as pool:
        answers = list(pool.map(lambda s: search(s, vector, k, filters, exact=exact), searchers))
    frames = [frame.assign(shard=i) for i, frame in enumerate(answers) if len(frame)]
    if not frames:
        return answers[0].assign(shard=pd.Series(dtype=int))
    merged = pd.concat(frames, ignore_index=True)
    merged = merged.sort_values([SCORE, tiles.ID], ascending=[False, True], kind="stable").head(k)
    merged = merged.reset_index(drop=True)
    merged.attrs.update(search_path="shards: " + ", ".join(sorted({s.path for s in searchers})))
    return merged


__all__ = ["MAX_SHARDS", "search_shards"]
