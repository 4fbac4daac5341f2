"""Query latency and recall on a large synthetic tile table: rsclip (resident, and LanceDB IVF_SQ) vs FAISS
IVF-PQ vs brute force.

    python bench/query.py                         # 1M rows, 3 rounds
    python bench/query.py --rows 20000 --queries 50 --repeats 2 --no-text    # a smoke run
    python bench/query.py --rows 10000000 --db /data/b10m    # streamed: bench/query_scale.py

Data: ``--rows`` clustered unit vectors (``--clusters`` Gaussian clusters on the sphere, like embeddings of an
archive with many scene types) with random WGS84 tile bounds, written through ``tiles.add_tiles`` and indexed
by ``rsclip.table.index.build_index``, once per run (or reused from ``--db`` with ``--reuse``). Queries are
fresh draws from the same mixture; ground truth is the exact top k by numpy. Single queries, one at a time.
The arms, one pass over the queries each per round (rounds interleaved, see bench/common.py; the first 5
queries of every pass are untimed; an arm's time ends with its answer, the result frame of ``searchers.search``
or FAISS's ids, and the data's row numbers are read from it afterwards, for recall):

- ``resident``: rsclip's ANN on the resident copy (``searcher_for(table, resident=True)`` on the table as
  ``rsclip.query`` and the services read it: ``snapshots.read_table``, a newer version looked for at every
  search; here the ``memory`` tier; loaded once, its load time and memory printed): p50/p95 ms, recall@k;
- ``compact``: the same on a ``compact`` resident copy (what tables too large for the memory tier get: the
  index in memory, vectors and columns read from the table on demand; ``compact_*``, ``compact_bytes_per_row``);
- ``lance``: the same search through Lance alone (``LanceSearcher``, ``rsclip.query``'s default);
- ``index``: the resident copy's index and exact re-scoring alone (row positions, no answer built, the copy
  looked up once per pass: the work the FAISS arm does); ``index_faiss_ratio`` = its p50 over FAISS's;
- ``faiss``: FAISS ``IndexIVFPQ`` (same list count, same code size, 8-bit codes, inner product) wrapped in
  ``IndexRefineFlat`` (same re-ranking depth), same nprobes; built once;
- ``qps_t1`` / ``qps_t4`` / ``qps_t8``: queries per second through the resident path with 1, 4 and 8
  concurrent callers (threads, as the web app's sessions and the API's workers, with the BLAS threads a
  serving process runs: ``searchers.SERVICE_BLAS_THREADS``, and at most ``slots.search_slots()`` requests
  searching at once, as in a service); ``concurrency_gain`` = 8 callers over 1;
- ``brute``: numpy brute force (one matrix-vector product + argpartition);
- ``text``: a text query end to end (``rsclip.search.query.query``: open table, encode with a ViT-B/32-sized
  text tower on this machine's device, search the resident copy);
- ``bbox_resident`` / ``bbox_compact`` / ``bbox_lance``: bbox-filtered queries (random boxes 10 to 90 degrees
  a side), latency and recall vs brute force filtered, on each path;
- ``far_resident`` / ``far_compact`` / ``far_lance``: queries near no cluster of the table (random unit vectors:
  the worst case of a text query across CLIP's modality gap), latency and recall (``ood_*``, ``compact_ood_*``,
  ``lance_ood_*``).

``faiss_ratio`` = resident p50 / FAISS p50, taken round by round. A sweep of nprobes x refine_factor (one pass,
after the rounds) shows where the defaults sit. The last line of output is one JSON object: the ``ann_*``,
``recall10`` and ``bbox_*`` keys are the resident path's, the ``lance_*`` keys the same measures through Lance.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: --help and the prerequisite check stay instant
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import Arm, Bench, Target  # noqa: E402

CHUNK = 100_000
WARM_QUERIES = 5  # untimed queries at the start of every pass: caches warm after the other arms ran
CONCURRENCY = (1, 4, 8)  # concurrent callers of the resident path's throughput arms (qps_t<n>)
TEXTS = ("airport", "storage tanks", "a river crossing farmland", "dense residential area", "harbour with boats",
         "golf course", "bare land", "stadium", "railway station", "forest")
TARGETS = [
    Target("recall10", ">=", 0.95, "recall@10 with the default nprobes and refine_factor"),
    Target("ann_p50_ms", "<=", 10.0, "single-query ANN latency, resident path"),
    Target("faiss_ratio", "<=", 2.0, "within 2x of FAISS (compare recall10 with faiss_recall10)"),
    Target("index_faiss_ratio", "<=", 2.0, "the index's share within 2x of FAISS doing the same work"),
    Target("bbox_recall10", ">=", 0.95, "bbox-filtered recall vs brute force filtered, the same bar"),
    Target("compact_recall10", ">=", 0.95, "recall@10 of the compact tier"),
    Target("concurrency_gain", ">=", 1.6, "8 concurrent queries' throughput over one caller's"),
    Target("ood_recall10", ">=", 0.95, "recall@10 of queries near no cluster (random directions)"),
]


@dataclass
class Data:
    """The synthetic table's vectors and bounds (in row order), the queries and the bbox queries' boxes."""

    vectors: np.ndarray
    bounds: dict
    queries: np.ndarray
    boxes: list


def clustered_vectors(rng, n: int, dim: int, centers, spread: float):
    """``n`` unit vectors: a random center plus isotropic noise of norm ~``spread``, renormalised."""
    import numpy as np

    idx = rng.integers(0, len(centers), n)
    out = centers[idx] + rng.standard_normal((n, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def random_bounds(rng, n: int) -> dict:
    """Random tile boxes: sides 0.01 to 1 degree, anywhere between 85S and 85N."""
    from rsclip.table import tiles

    size = rng.uniform(0.01, 1.0, n)
    lon = rng.uniform(-180.0, 180.0 - 1.0, n)
    lat = rng.uniform(-85.0, 85.0 - 1.0, n)
    return {tiles.LON_MIN: lon, tiles.LAT_MIN: lat, tiles.LON_MAX: lon + size, tiles.LAT_MAX: lat + size}


def generate(args, visit) -> tuple:
    """Draw the table's rows chunk by chunk, ``visit(start, vectors, bounds)`` each, then the queries and the
    boxes: the same draws for the same ``--seed`` at any size (so ``--reuse`` finds the table it would write,
    and bench/query_scale.py streams what this module holds in memory). Returns ``(queries, boxes)``."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    for start in range(0, args.rows, CHUNK):
        n = min(CHUNK, args.rows - start)
        vectors = clustered_vectors(rng, n, args.dim, centers, args.spread)
        visit(start, vectors, random_bounds(rng, n))
    queries = clustered_vectors(rng, args.queries, args.dim, centers, args.spread)
    boxes = []
    for _ in range(min(args.queries, 100)):
        w, h = rng.uniform(10, 90), rng.uniform(10, 90)
        lon, lat = rng.uniform(-180, 180 - w), rng.uniform(-90, 90 - h)
        boxes.append((lon, lat, lon + w, lat + h))
    return queries, boxes


def make_data(args) -> Data:
    """The table's rows, the queries and the boxes, in memory."""
    import numpy as np

    from rsclip.table import tiles

    vectors = np.empty((args.rows, args.dim), dtype=np.float32)
    bounds = {c: np.empty(args.rows) for c in tiles.BOUNDS_COLUMNS}

    def keep(start, chunk, chunk_bounds):
        vectors[start : start + len(chunk)] = chunk
        for c, v in chunk_bounds.items():
            bounds[c][start : start + len(chunk)] = v
    queries, boxes = generate(args, keep)
    return Data(vectors, bounds, queries, boxes)


def add_chunk(table, start: int, vectors, bounds: dict, *, keyed: bool = True) -> None:
    """Append rows ``start..`` (``vectors`` and their ``bounds``): row ``j`` is window ``j % 64`` of scene
    ``j // 64``, so that a result row's number can be read back from its uri and x (:func:`rows_of`).
    ``keyed``: through ``tiles.add_tiles`` (a merge on the id, as the jobs write); else a plain append of the
    same rows (ids are unique by construction: a merge against 10M stored ids per chunk takes hours)."""
    import numpy as np

    from rsclip.table import tiles

    n = len(vectors)
    i = np.arange(start, start + n)
    write = tiles.add_tiles if keyed else (lambda t, rows: t.add(tiles.tiles_to_arrow(rows, t.schema)))
    write(table, {
        tiles.URI: np.array([f"s3://bench/scene-{j // 64:06d}.tif" for j in i]),
        tiles.X: (i % 64).astype(np.int32) * 224, tiles.Y: np.zeros(n, np.int32),
        tiles.WIDTH: np.full(n, 224, np.int32), tiles.HEIGHT: np.full(n, 224, np.int32),
        tiles.CRS: ["EPSG:4326"] * n, tiles.VECTOR: vectors, **bounds,
    })


def write_table(db: Path, data: Data, model: str) -> tuple[float, float]:
    """Write ``data`` as a fresh tile table at ``db`` and index it; returns (write s, index s)."""
    from rsclip.table import index as rindex
    from rsclip.table import tiles

    rows, dim = data.vectors.shape
    t0 = time.perf_counter()
    shutil.rmtree(db, ignore_errors=True)
    table = tiles.create_table(db, model=model, dim=dim)
    for start in range(0, rows, CHUNK):
        sl = slice(start, min(start + CHUNK, rows))
        add_chunk(table, start, data.vectors[sl], {c: data.bounds[c][sl] for c in data.bounds})
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rindex.build_index(db, min_rows=1)
    return write_s, time.perf_counter() - t0


def rows_of(frame):
    """The data's row numbers of a result frame, from each row's uri and x (as :func:`add_chunk` names them)."""
    import numpy as np

    from rsclip.table import tiles

    scenes = [int(u.rsplit("-", 1)[1][:-4]) for u in frame[tiles.URI]]
    return np.asarray(scenes, dtype=np.int64) * 64 + frame[tiles.X].to_numpy() // 224


def answer_rows(found):
    """The data's row numbers of one answer of an arm: a result frame's (:func:`rows_of`), read after the arm's
    timing as FAISS's ids need no reading (~0.2 ms a frame); anything else (ids, positions) as it is."""
    return rows_of(found) if hasattr(found, "columns") else found


def exact_topk(vectors, queries, k: int, mask=None) -> list:
    """Row indices of the exact top ``k`` (cosine) for each query, optionally among ``mask`` rows."""
    import numpy as np

    out = []
    rows = np.flatnonzero(mask) if mask is not None else None
    for q in queries:
        scores = (vectors[rows] if rows is not None else vectors) @ q
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k] if len(scores) > k else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        out.append(rows[top] if rows is not None else top)
    return out


def recall(found: list, truth: list, k: int) -> float:
    """Mean |found ∩ truth| / min(k, |truth|)."""
    vals = [len(set(f.tolist()) & set(t.tolist())) / max(1, min(k, len(t))) for f, t in zip(found, truth)]
    return float(sum(vals) / len(vals))


def timed(fn, items, warm: int = WARM_QUERIES):
    """``(results, latencies_ms)`` of ``fn`` over ``items`` one at a time, after ``warm`` untimed calls."""
    import numpy as np

    for item in items[:warm]:
        fn(item)
    results, times = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        times.append((time.perf_counter() - t0) * 1000.0)
    return results, np.asarray(times)


def pct(times, q: float) -> float:
    import numpy as np

    return float(np.percentile(times, q))


def latency_arm(name: str, prefix: str, fn, items, truth=None, recall_key: str = "", k: int | None = None) -> Arm:
    """An arm timing ``fn`` over ``items``: ``<prefix>p50_ms``, ``<prefix>p95_ms`` and, with ``truth``, the
    recall@``k`` of its answers as ``recall_key`` (``k``: the longest true answer, unless given: a box may
    hold fewer than k rows)."""
    def run() -> dict:
        found, times = timed(fn, items)
        out = {f"{prefix}p50_ms": pct(times, 50), f"{prefix}p95_ms": pct(times, 95)}
        if truth is not None:  # only then are the answers' row numbers read (bench/api.py's tables lack them)
            found = [answer_rows(f) for f in found]
            out[recall_key] = recall(found, truth, k or max(len(t) for t in truth))
        return out
    return Arm(name, run, warm=lambda: timed(fn, items[:WARM_QUERIES], warm=0))


def throughput_arm(name: str, fn, items, threads: int) -> Arm:
    """An arm answering all ``items`` with ``threads`` concurrent callers of ``fn``, as a service's requests: the
    BLAS libraries running the threads a serving process runs (``serve_searches``), each call holding one of the
    process's search slots from its table lookup to its answer (``rsclip.search.slots.searching``, as
    ``rsclip.query`` holds it): ``<name>`` = queries/s."""
    from concurrent.futures import ThreadPoolExecutor

    from rsclip.search.searchers import service_blas_threads
    from rsclip.search.slots import searching

    def request(item):
        with searching():
            return fn(item)

    def run() -> dict:
        with service_blas_threads(), ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(request, items))
            return {name: len(items) / (time.perf_counter() - t0)}
    return Arm(name, run, warm=lambda: [fn(item) for item in items[:WARM_QUERIES]])


def build_faiss(vectors, partitions: int, sub_vectors: int, seed: int):
    """FAISS with the same lists, code size, nprobes and re-ranking depth as rsclip's defaults."""
    import faiss
    import numpy as np

    from rsclip.search import searchers

    rows, dim = vectors.shape
    quantizer = faiss.IndexFlatIP(dim)
    ivfpq = faiss.IndexIVFPQ(quantizer, dim, partitions, sub_vectors, 8, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[np.random.default_rng(seed).choice(rows, min(rows, 256 * partitions), replace=False)]
    ivfpq.train(sample)
    ivfpq.nprobe = searchers.DEFAULT_NPROBES
    index = faiss.IndexRefineFlat(ivfpq)  # adds to both the PQ lists and the exact re-ranking store
    index.add(vectors)
    index.k_factor = float(searchers.DEFAULT_REFINE_FACTOR)
    return index


def candidates_then_exact(rows, q, k: int):
    """The resident copy's share of a search, FAISS's whole work: the index's candidates, re-scored exactly, the
    top ``k`` positions (the table's rows in write order: positions are row numbers). No answer is built."""
    from rsclip.search import searchers as S

    return rows.top(rows.nearest(q, k * S.RESIDENT_REFINE_FACTOR[rows.kind], S.RESIDENT_NPROBES), q, k)[0]


def arms(args, db: Path, table, data: Data, truth: list, faiss_index, compact) -> list[Arm]:
    """The arms compared in every round (see the module doc)."""
    import numpy as np

    from rsclip.table import tiles
    from rsclip.search import searchers as S
    from rsclip.search.filters import Filters
    from rsclip.search.query import query

    k, queries = args.k, list(data.queries)
    lon_min, lat_min, lon_max, lat_max = (data.bounds[c] for c in tiles.BOUNDS_COLUMNS)
    masks = [(lon_min <= b[2]) & (lon_max >= b[0]) & (lat_min <= b[3]) & (lat_max >= b[1]) for b in data.boxes]
    b_truth = [exact_topk(data.vectors, data.queries[i : i + 1], k, masks[i])[0] for i in range(len(data.boxes))]
    box_items = list(range(len(data.boxes)))

    def brute(q):
        top = np.argpartition(-(data.vectors @ q), k)[:k]
        return top[np.argsort(-(data.vectors[top] @ q))]

    def boxed(make):
        return lambda i: S.search(make(), data.queries[i], k, Filters.of(bbox=data.boxes[i]))

    read = services_reader(db, table)
    resident, lance = (lambda: S.searcher_for(read(), resident=True)), (lambda: S.LanceSearcher(read()))
    compacted = lambda: S.ResidentSearcher(read(), compact)
    held = resident().rows  # the index arm: the copy's index and exact scores only, as FAISS's arm (no lookup)

    far = list(far_queries(args))  # far from every cluster (texts across CLIP's gap, anything unlike the archive)
    far_truth = exact_topk(data.vectors, np.asarray(far), k)
    out = [
        latency_arm("resident", "ann_", lambda q: S.search(resident(), q, k), queries, truth, f"recall{k}"),
        latency_arm("far_resident", "ood_", lambda q: S.search(resident(), q, k), far, far_truth,
                    f"ood_recall{k}"),
        latency_arm("far_compact", "compact_ood_", lambda q: S.search(compacted(), q, k), far, far_truth,
                    f"compact_ood_recall{k}"),
        latency_arm("far_lance", "lance_ood_", lambda q: S.search(lance(), q, k), far, far_truth,
                    f"lance_ood_recall{k}"),
        *([latency_arm("index", "index_", lambda q: candidates_then_exact(held, q, k), queries, truth,
                       f"index_recall{k}")] if held.indexed else []),  # none at <= memory_table.EXACT_ROWS rows
        latency_arm("compact", "compact_ann_", lambda q: S.search(compacted(), q, k), queries, truth,
                    f"compact_recall{k}"),
        latency_arm("lance", "lance_ann_", lambda q: S.search(lance(), q, k), queries, truth,
                    f"lance_recall{k}"),
        latency_arm("faiss", "faiss_", lambda q: faiss_index.search(q[None, :], k)[1][0], queries, truth,
                    f"faiss_recall{k}"),
        latency_arm("brute", "brute_", brute, queries[:50]),
        latency_arm("bbox_resident", "bbox_", boxed(resident), box_items, b_truth, f"bbox_recall{k}"),
        latency_arm("bbox_compact", "compact_bbox_", boxed(compacted), box_items, b_truth, f"compact_bbox_recall{k}"),
        latency_arm("bbox_lance", "lance_bbox_", boxed(lance), box_items, b_truth, f"lance_bbox_recall{k}"),
    ]
    for threads in CONCURRENCY:
        out.append(throughput_arm(f"qps_t{threads}", lambda q: S.search(resident(), q, k), queries, threads))
    if not args.no_text:
        out.append(latency_arm("text", "text_e2e_", lambda s: query(db, s, k=k, resident=True), list(TEXTS) * 2))
    return out


def faiss_sub_vectors(dim: int) -> int:
    """FAISS IVF-PQ's sub-vectors (the anchor's codes): the largest divisor of ``dim`` not above ``dim / 8``, one
    byte per ~8 dimensions (64 bytes at 512-d)."""
    return max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)


def services_reader(db: Path, table):
    """What every resident and Lance arm searches: ``table`` as ``rsclip.query`` and the services read it, a
    snapshot kept per process and checked for a newer version at every search (``snapshots.read_table``). A table
    opened once with ``tiles.open_table`` would ask LanceDB's event-loop thread its uri and version at every
    search instead, which the services never do (BENCHMARKS.md, Query, 2026-12-07)."""
    from rsclip.table import snapshots

    return lambda: snapshots.read_table(db, table.name)


def far_queries(args):
    """Random unit vectors (their own draws: the table's and the other queries' stay the same): queries near no
    cluster of the table, where every list is about as close as any other (``ood_*`` figures)."""
    import numpy as np

    rng = np.random.default_rng(args.seed + 1)
    far = rng.standard_normal((min(args.queries, 100), args.dim)).astype(np.float32)
    return far / np.linalg.norm(far, axis=1, keepdims=True)


def sweep(args, table, data: Data, truth: list) -> None:
    """One pass per nprobes:refine pair on both paths (printed, not in the JSON line)."""
    from rsclip.search import searchers as S
    from rsclip.search.memory_table import resident_table

    queries = list(data.queries[:100])
    for pair in filter(None, args.sweep.split(",")):
        nprobes, refine = (int(v) for v in pair.split(":"))
        lance_refine = refine if refine > 1 else None  # Lance re-ranks nothing without a factor
        for name, make in (("lance", lambda: S.LanceSearcher(table, nprobes=nprobes, refine_factor=lance_refine)),
                           ("resident", lambda: S.ResidentSearcher(table, resident_table(table, S.FETCH_COLUMNS),
                                                                   nprobes=nprobes, refine_factor=refine))):
            found, times = timed(lambda q: S.search(make(), q, args.k), queries)
            found = [answer_rows(f) for f in found]
            print(f"  sweep {name:8s} nprobes={nprobes:3d} refine={refine:3d}: p50 {pct(times, 50):.3f} ms "
                  f"recall {recall(found, truth[:100], args.k):.4f}", flush=True)


def open_or_write(args, db: Path, data: Data) -> tuple:
    """The indexed table (written now, or reused with ``--reuse``) and the set-up times measured once."""
    from rsclip.table import tiles
    from rsclip.testing import build_vit_b32

    # the ViT-B/32-sized model sits beside the table (its metadata names it), so a reused table keeps it
    model_dir = Path(f"{db}-vit-b32")
    once = {}
    if args.reuse:
        table = tiles.open_table(db)
        if table.count_rows() != args.rows:
            raise SystemExit(f"bench/query.py: --reuse: {db} holds {table.count_rows()} rows, not --rows "
                             f"{args.rows}; drop --reuse to write it again")
    else:
        once["table_write_s"], once["index_build_s"] = write_table(db, data, str(model_dir))
        table = tiles.open_table(db)
    if not args.no_text and not (model_dir / "config.json").is_file():
        build_vit_b32(model_dir)
    return table, once


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.8, help="noise norm relative to the unit cluster center")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--db", default=None, help="table folder (default: a temporary folder, removed at the end)")
    p.add_argument("--reuse", action="store_true", help="reuse the table and index at --db (same --rows/--seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", default="10:1,10:10,20:1,20:10,40:10,80:10",
                   help="nprobes:refine pairs for the one-pass sweep after the rounds ('' to skip)")
    p.add_argument("--no-text", action="store_true", help="skip the ViT-B/32 text query")
    p.add_argument("--lance-index", action="store_true",
                   help="above 2M rows (bench/query_scale.py): also build Lance's vector index (IVF_SQ) and measure it")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 avoids OpenMP thrashing on an oversubscribed host")
    args = p.parse_args(argv)
    if args.reuse and not args.db:
        p.error("--reuse needs --db")
    bench = Bench("query", args, needs=[common.module_need("faiss")]).start()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    return common.in_table_folder("query", args.db, lambda db: measure(args, bench, db))


def measure(args, bench: Bench, db: Path) -> dict:
    """Build (or reuse) the table, the resident copy and FAISS once, then the interleaved rounds (above
    ``IN_MEMORY_ROWS`` rows: bench/query_scale.py)."""
    from bench import query_scale

    if args.rows > query_scale.IN_MEMORY_ROWS:
        return query_scale.measure(args, bench, db)
    from rsclip.table import index as rindex
    from rsclip.search import searchers as S
    from rsclip.search import memory_table
    from rsclip.search.memory_table import resident_table
    from rsclip.table import datasets

    print(f"rows={args.rows} dim={args.dim} clusters={args.clusters} queries={args.queries}", flush=True)
    data = make_data(args)
    table, once = open_or_write(args, db, data)
    print(f"table: {rindex.index_state(table)}", flush=True)
    t0 = time.perf_counter()
    truth = exact_topk(data.vectors, data.queries, args.k)
    print(f"ground truth {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    resident = resident_table(table, S.FETCH_COLUMNS)
    if resident is None:
        raise SystemExit("bench/query.py: the resident copy does not fit the in-memory limit; use fewer --rows")
    once["resident_load_s"], once["resident_mb"] = time.perf_counter() - t0, resident.nbytes / 1e6
    t0 = time.perf_counter()
    compact = memory_table.ResidentTable(datasets.dataset_of(table), S.fetch_columns(table), indexed=True,
                                         tier=memory_table.COMPACT)
    once["compact_load_s"], once["compact_bytes_per_row"] = time.perf_counter() - t0, compact.nbytes / args.rows
    print(f"compact copy {compact.nbytes / 1e6:.0f} MB ({once['compact_bytes_per_row']:.0f} B/row) in "
          f"{once['compact_load_s']:.1f}s", flush=True)
    t0 = time.perf_counter()
    partitions, sub_vectors = rindex.ivf_lists(args.rows), faiss_sub_vectors(args.dim)
    faiss_index = build_faiss(data.vectors, partitions, sub_vectors, args.seed)
    once["faiss_build_s"] = time.perf_counter() - t0
    print(f"resident copy {once['resident_mb']:.0f} MB in {once['resident_load_s']:.1f}s; faiss build "
          f"{once['faiss_build_s']:.1f}s ({partitions} lists, {sub_vectors} x 8-bit codes)", flush=True)
    figures = bench.rounds(arms(args, db, table, data, truth, faiss_index, compact))
    sweep(args, table, data, truth)
    ratios = {"faiss_ratio": ("ann_p50_ms", "faiss_p50_ms"),
              "index_faiss_ratio": ("index_p50_ms", "faiss_p50_ms"),
              "compact_faiss_ratio": ("compact_ann_p50_ms", "faiss_p50_ms"),
              "concurrency_gain": (f"qps_t{CONCURRENCY[-1]}", "qps_t1")}
    ratios = {name: sides for name, sides in ratios.items() if all(side in figures for side in sides)}
    return bench.finish(figures, ratios=ratios, once=once,
                        constants={"rows": args.rows}, targets=TARGETS)


if __name__ == "__main__":
    main()
