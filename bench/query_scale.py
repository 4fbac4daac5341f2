"""bench/query.py at sizes whose vectors do not fit in this machine's memory (``--rows`` above
:data:`IN_MEMORY_ROWS`, e.g. 10,000,000: 20 GB of 512-d float32).

    python bench/query.py --rows 10000000 --db /data/bench10m            # writes the table (kept), then measures
    python bench/query.py --rows 10000000 --db /data/bench10m --reuse    # measures the table written before

The same rows as bench/query.py (``generate``: the same draws for the same ``--seed``), never all in memory:
one pass writes them (``--reuse``: draws them only), a second computes the exact answers (top k of every
query, and of every query inside each box) chunk by chunk. What is measured, one pass over the queries per
arm per round:

- ``compact``: the resident search through a ``compact`` copy (the tier a table this size gets,
  ``rsclip.search.memory_table``) of the table as ``rsclip.query`` and the services read it (bench/query.py's
  ``services_reader``, as its arms at 1M): p50/p95 ms, recall@k;
  its load time, its memory and the process's RSS;
- ``far_compact``: queries near no cluster (bench/query.py's ``far_queries``: random unit vectors, the worst case
  of a text across CLIP's modality gap) through the same copy (``compact_ood_*``);
- ``bbox1`` / ``bbox001``: boxes keeping ~1 % and ~0.01 % of the rows (25 and 2.5 degrees a side), recall vs
  the exact answer inside each box (the target is 1.0: a filter never loses a matching tile);
- ``qps_t1`` / ``qps_t4`` / ``qps_t8``: queries per second with 1, 4 and 8 concurrent callers;
- ``lance``: the search through Lance alone, only when the table has Lance's vector index (``--lance-index``
  builds it: IVF_SQ took 7.6 min at 10M rows on this machine, IVF_PQ most of an hour; off by default).

No FAISS baseline here: its exact re-ranking store would hold all vectors (bench/query.py compares at 1M).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Target  # noqa: E402

IN_MEMORY_ROWS = 2_000_000
BOX_SIDES = {"bbox1": 25.0, "bbox001": 2.5}  # degrees: ~1 % and ~0.01 % of the rows' area
BOXES = 50
TARGETS = [
    Target("compact_ann_p50_ms", "<=", 20.0, "single-query latency of the compact tier"),
    Target("compact_recall10", ">=", 0.95, "recall@10 of the compact tier"),
    Target("bbox1_recall10", ">=", 1.0, "a box keeping ~1% of the rows: the exact answer"),
    Target("bbox001_recall10", ">=", 1.0, "a box keeping ~0.01% of the rows: the exact answer"),
    Target("concurrency_gain", ">=", 1.6, "8 concurrent queries' throughput over one caller's"),
]


def boxes_of(args, side: float, n: int) -> list:
    """``n`` square boxes of ``side`` degrees where the tiles are (seeded apart from the table's draws)."""
    import numpy as np

    rng = np.random.default_rng(args.seed + int(side * 100))
    lon, lat = rng.uniform(-180, 180 - side, n), rng.uniform(-85, 85 - side, n)
    return [(float(a), float(b), float(a + side), float(b + side)) for a, b in zip(lon, lat)]


class Truth:
    """The exact top ``k`` of each query (row numbers, best first), over the rows shown so far, optionally
    only the rows inside that query's box."""

    def __init__(self, queries, k: int, boxes=None):
        import numpy as np

        self.queries, self.k, self.boxes = queries, k, boxes
        self.best = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.rows = np.full((len(queries), k), -1, dtype=np.int64)

    def see(self, start: int, vectors, bounds) -> None:
        import numpy as np

        scores = vectors @ self.queries.T  # (chunk, queries)
        if self.boxes is not None:
            for i, (x0, y0, x1, y1) in enumerate(self.boxes):
                inside = ((bounds["lon_min"] <= x1) & (bounds["lon_max"] >= x0) & (bounds["lat_min"] <= y1)
                          & (bounds["lat_max"] >= y0))
                scores[~inside, i] = -np.inf
        for i in range(len(self.queries)):
            column = scores[:, i]
            top = np.argpartition(-column, self.k)[: self.k] if len(column) > self.k else np.arange(len(column))
            both = np.concatenate([self.best[i], column[top]])
            rows = np.concatenate([self.rows[i], top + start])
            keep = np.argsort(-both, kind="stable")[: self.k]
            self.best[i], self.rows[i] = both[keep], rows[keep]

    def answers(self) -> list:
        """Per query, its true rows (fewer than k where a box holds fewer rows)."""
        import numpy as np

        return [r[np.isfinite(b)] for b, r in zip(self.best, self.rows)]


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    return common.memory_mib("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_or_draw(args, db: Path) -> tuple:
    """Write the table (or, with ``--reuse``, only draw its rows); returns ``(queries, once)``."""
    from bench import query as Q
    from rsclip.table import index as rindex
    from rsclip.table import tiles

    once: dict = {}
    t0 = time.perf_counter()
    if args.reuse:
        queries, _ = Q.generate(args, lambda *chunk: None)
        if tiles.open_table(db).count_rows() != args.rows:
            raise SystemExit(f"bench/query.py: --reuse: {db} does not hold --rows {args.rows} rows")
        return queries, once
    table = tiles.create_table(db, model="bench", dim=args.dim)
    queries, _ = Q.generate(args, lambda start, v, b: Q.add_chunk(table, start, v, b, keyed=False))
    once.update(table_write_s=time.perf_counter() - t0, write_peak_rss_mb=peak_rss_mb())
    if args.lance_index:
        t0 = time.perf_counter()
        rindex.build_index(db, min_rows=1)
        once.update(index_build_s=time.perf_counter() - t0, index_build_peak_rss_mb=peak_rss_mb())
    return queries, once


def measure(args, bench, db: Path) -> dict:
    """The streaming measurement (module doc)."""
    from bench import query as Q
    from rsclip.search import memory_table
    from rsclip.search import searchers as S
    from rsclip.search.filters import Filters
    from rsclip.table import datasets, tiles

    queries, once = write_or_draw(args, db)
    boxes = {name: boxes_of(args, side, min(BOXES, len(queries))) for name, side in BOX_SIDES.items()}
    far = Q.far_queries(args)
    truths = {"ann": Truth(queries, args.k), "far": Truth(far, args.k),
              **{n: Truth(queries[: len(b)], args.k, b) for n, b in boxes.items()}}
    t0 = time.perf_counter()
    Q.generate(args, lambda start, v, b: [t.see(start, v, b) for t in truths.values()])
    print(f"exact answers {time.perf_counter() - t0:.0f}s", flush=True)
    table = tiles.open_table(db)
    before, t0 = rss_mb(), time.perf_counter()
    compact = memory_table.ResidentTable(datasets.dataset_of(table), S.fetch_columns(table), indexed=True,
                                         tier=memory_table.COMPACT)
    once.update(compact_load_s=time.perf_counter() - t0, compact_mb=compact.nbytes / 1e6,
                compact_bytes_per_row=compact.nbytes / args.rows, rss_mb=rss_mb(), rss_before_load_mb=before)
    print(f"compact copy {once['compact_mb']:.0f} MB ({once['compact_bytes_per_row']:.0f} B/row) in "
          f"{once['compact_load_s']:.0f}s; RSS {before:.0f} -> {once['rss_mb']:.0f} MB", flush=True)
    read = Q.services_reader(db, table)
    searcher = lambda: S.ResidentSearcher(read(), compact)
    items, k = list(range(len(queries))), args.k
    arms = [Q.latency_arm("compact", "compact_ann_", lambda i: S.search(searcher(), queries[i], k),
                          items, truths["ann"].answers(), f"compact_recall{k}"),
            Q.latency_arm("far_compact", "compact_ood_", lambda i: S.search(searcher(), far[i], k),
                          list(range(len(far))), truths["far"].answers(), f"compact_ood_recall{k}")]
    for name, box in boxes.items():
        ask = lambda i, box=box: S.search(searcher(), queries[i], k, Filters.of(bbox=box[i]))
        arms.append(Q.latency_arm(name, f"{name}_", ask, list(range(len(box))), truths[name].answers(),
                                  f"{name}_recall{k}", k=k))
    for threads in Q.CONCURRENCY:
        arms.append(Q.throughput_arm(f"qps_t{threads}", lambda q: S.search(searcher(), q, k), list(queries), threads))
    if tiles.has_vector_index(table):
        arms.append(Q.latency_arm("lance", "lance_ann_", lambda i: S.search(S.LanceSearcher(read()),
                                  queries[i], k), items, truths["ann"].answers(), f"lance_recall{k}"))
    figures = bench.rounds(arms)
    return bench.finish(figures, ratios={"concurrency_gain": (f"qps_t{Q.CONCURRENCY[-1]}", "qps_t1")}, once=once,
                        constants={"rows": args.rows}, targets=TARGETS)


__all__ = ["IN_MEMORY_ROWS", "measure"]


if __name__ == "__main__":  # the same run as bench/query.py (which comes here above IN_MEMORY_ROWS rows)
    from bench import query

    query.main()
