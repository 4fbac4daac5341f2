"""Query latency and recall on a large synthetic tile table: rsclip (LanceDB IVF_PQ) vs FAISS vs brute force.

    python bench/query.py --rows 1000000        # needs ~2 GiB RAM per 250k rows... see --help

Data: ``--rows`` clustered unit vectors (``--clusters`` Gaussian clusters on the sphere, like embeddings of an
archive with many scene types) with random WGS84 tile bounds, written through ``tiles.add_tiles`` and indexed
by ``rsclip.index.build_index``. Queries are fresh draws from the same mixture. Ground truth is the exact top
k by numpy. Measured, single query at a time:

- rsclip ANN (``searchers.LanceSearcher`` with the default nprobes/refine): p50/p95 ms, recall@k; plus a sweep of
  nprobes x refine_factor to show where the defaults sit; through Lance alone (``rsclip.query``'s default)
  and on the resident copy (``resident=True``, the web app's path: its load time and memory are printed);
- FAISS ``IndexIVFPQ`` (same list count, same code size, 8-bit codes, inner product) wrapped in
  ``IndexRefineFlat`` (same re-ranking depth), same nprobes;
- numpy brute force (one matrix-vector product + argpartition);
- text query end to end (``rsclip.query``: open table, encode with a ViT-B/32-sized text tower on this
  machine's device, search);
- bbox-filtered queries (random boxes 10 to 90 degrees a side), latency and recall vs brute force filtered,
  both paths.

The last line of output is one JSON object with the headline numbers: the ``ann_*``, ``recall10`` and
``bbox_*`` keys are the resident path's, the ``lance_*`` keys the same measures through Lance alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from rsclip.core import index as rindex  # noqa: E402
from rsclip.core import tiles  # noqa: E402

from rsclip.search import searchers as rquery  # noqa: E402
from rsclip.search.filters import Filters  # noqa: E402

CHUNK = 100_000


def clustered_vectors(rng, n: int, dim: int, centers: np.ndarray, spread: float) -> np.ndarray:
    """``n`` unit vectors: a random center plus isotropic noise of norm ~``spread``, renormalised."""
    idx = rng.integers(0, len(centers), n)
    out = centers[idx] + rng.standard_normal((n, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def random_bounds(rng, n: int) -> dict[str, np.ndarray]:
    """Random tile boxes: sides 0.01 to 1 degree, anywhere between 85S and 85N."""
    size = rng.uniform(0.01, 1.0, n)
    lon = rng.uniform(-180.0, 180.0 - 1.0, n)
    lat = rng.uniform(-85.0, 85.0 - 1.0, n)
    return {tiles.LON_MIN: lon, tiles.LAT_MIN: lat, tiles.LON_MAX: lon + size, tiles.LAT_MAX: lat + size}


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Row indices of the exact top ``k`` (cosine) for each query, optionally among ``mask`` rows."""
    out = []
    rows = np.flatnonzero(mask) if mask is not None else None
    for q in queries:
        scores = (vectors[rows] if rows is not None else vectors) @ q
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k] if len(scores) > k else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        out.append(rows[top] if rows is not None else top)
    return out


def recall(found: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    """Mean |found ∩ truth| / min(k, |truth|)."""
    vals = [len(set(f.tolist()) & set(t.tolist())) / max(1, min(k, len(t))) for f, t in zip(found, truth)]
    return float(np.mean(vals))


def timed(fn, items, warmup: int = 5):
    """``(results, latencies_ms)`` of ``fn`` over ``items`` one at a time, after ``warmup`` untimed calls."""
    for item in items[:warmup]:
        fn(item)
    results, times = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        times.append((time.perf_counter() - t0) * 1000.0)
    return results, np.asarray(times)


def pct(times: np.ndarray, q: float) -> float:
    return round(float(np.percentile(times, q)), 3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.8, help="noise norm relative to the unit cluster center")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--db", default=None, help="table folder (default: a temporary folder, removed at the end)")
    p.add_argument("--reuse", action="store_true", help="reuse an existing table and index at --db")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", default="10:1,10:10,20:1,20:10,40:10,80:10", help="nprobes:refine pairs")
    p.add_argument("--no-text", action="store_true", help="skip the ViT-B/32 text query")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 avoids OpenMP thrashing on an oversubscribed host")
    args = p.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="rsclip-bench-query-"))
    db = Path(args.db) if args.db else tmp / "db"
    print(f"rows={args.rows} dim={args.dim} clusters={args.clusters} queries={args.queries} cpus={os.cpu_count()} "
          f"load={os.getloadavg()[0]:.1f}", flush=True)

    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vectors = np.empty((args.rows, args.dim), dtype=np.float32)
    bounds = {c: np.empty(args.rows) for c in tiles.BOUNDS_COLUMNS}
    for start in range(0, args.rows, CHUNK):
        n = min(CHUNK, args.rows - start)
        vectors[start : start + n] = clustered_vectors(rng, n, args.dim, centers, args.spread)
        for c, v in random_bounds(rng, n).items():
            bounds[c][start : start + n] = v
    queries = clustered_vectors(rng, args.queries, args.dim, centers, args.spread)
    uris = np.array([f"s3://bench/scene-{i // 64:06d}.tif" for i in range(args.rows)])
    xs = (np.arange(args.rows) % 64).astype(np.int32) * 224

    # ViT-B/32-sized random CLIP: its text tower is what a text query costs; its metadata names the model.
    model_dir = tmp / "vit-b32"
    if not args.no_text:
        from rsclip.testing import build_vit_b32

        build_vit_b32(model_dir)
    model_name = str(model_dir)

    t0 = time.perf_counter()
    if not args.reuse:
        shutil.rmtree(db, ignore_errors=True)
        table = tiles.create_table(db, model=model_name, dim=args.dim)
        for start in range(0, args.rows, CHUNK):
            sl = slice(start, min(start + CHUNK, args.rows))
            n = sl.stop - sl.start
            tiles.add_tiles(table, {
                tiles.URI: uris[sl], tiles.X: xs[sl], tiles.Y: np.zeros(n, np.int32),
                tiles.WIDTH: np.full(n, 224, np.int32), tiles.HEIGHT: np.full(n, 224, np.int32),
                tiles.CRS: ["EPSG:4326"] * n, tiles.VECTOR: vectors[sl], **{c: bounds[c][sl] for c in bounds},
            })
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = rindex.build_index(db, min_rows=1)
        index_s = time.perf_counter() - t0
    else:
        write_s = index_s = float("nan")
        state = rindex.index_state(tiles.open_table(db))
    table = tiles.open_table(db)
    print(f"write {write_s:.1f}s, index {index_s:.1f}s: {state.action}", flush=True)
    ids = table.to_lance().to_table(columns=[tiles.ID, tiles.URI, tiles.X]).to_pandas()
    # rows were written in order, but map through uri+x so the check does not rely on it
    row_of = {i: int(u.rsplit("-", 1)[1][:-4]) * 64 + x // 224 for i, u, x in zip(ids[tiles.ID], ids[tiles.URI], ids[tiles.X])}
    partitions, sub_vectors = rindex.ivf_pq_params(args.rows, args.dim)

    t0 = time.perf_counter()
    truth = exact_topk(vectors, queries, args.k)
    print(f"ground truth {time.perf_counter() - t0:.1f}s", flush=True)

    def rows_of(frame):
        return np.array([row_of[i] for i in frame[tiles.ID]])

    # rsclip ANN: the defaults, then a sweep.
    def ann(q, nprobes=rquery.DEFAULT_NPROBES, refine=rquery.DEFAULT_REFINE_FACTOR):
        return rows_of(rquery.search(rquery.LanceSearcher(table, nprobes=nprobes, refine_factor=refine), q, args.k))

    found, times = timed(ann, list(queries))
    ann_p50, ann_p95, ann_recall = pct(times, 50), pct(times, 95), recall(found, truth, args.k)
    print(f"rsclip ANN nprobes={rquery.DEFAULT_NPROBES} refine={rquery.DEFAULT_REFINE_FACTOR}: "
          f"p50 {ann_p50} ms, p95 {ann_p95} ms, recall@{args.k} {ann_recall:.4f}", flush=True)
    sweep = []
    for pair in args.sweep.split(","):
        nprobes, refine = (int(v) for v in pair.split(":"))
        f, t = timed(lambda q: ann(q, nprobes, refine if refine > 1 else None), list(queries[:100]))
        sweep.append((nprobes, refine, pct(t, 50), recall(f, truth[:100], args.k)))
        print(f"  sweep nprobes={nprobes:3d} refine={refine:3d}: p50 {sweep[-1][2]} ms recall {sweep[-1][3]:.4f}", flush=True)

    # The same searches on the resident copy (what the web app uses): loaded once, then index row ids only.
    from rsclip.search.resident import resident_table

    t0 = time.perf_counter()
    resident_mb = resident_table(table, rquery.FETCH_COLUMNS).nbytes / 1e6
    resident_load_s = time.perf_counter() - t0

    def ann_resident(q, nprobes=rquery.DEFAULT_NPROBES, refine=rquery.DEFAULT_REFINE_FACTOR):
        return rows_of(rquery.search(rquery.ResidentSearcher(table, resident_table(table, rquery.FETCH_COLUMNS), nprobes=nprobes, refine_factor=refine), q, args.k))

    r_found, r_times = timed(ann_resident, list(queries))
    res_p50, res_p95, res_recall = pct(r_times, 50), pct(r_times, 95), recall(r_found, truth, args.k)
    print(f"resident copy: loaded in {resident_load_s:.1f}s, {resident_mb:.0f} MB; ANN p50 {res_p50} ms, p95 {res_p95} ms, "
          f"recall@{args.k} {res_recall:.4f}", flush=True)
    for pair in args.sweep.split(","):
        nprobes, refine = (int(v) for v in pair.split(":"))
        f, t = timed(lambda q: ann_resident(q, nprobes, refine), list(queries[:100]))
        print(f"  resident sweep nprobes={nprobes:3d} refine={refine:3d}: p50 {pct(t, 50)} ms "
              f"recall {recall(f, truth[:100], args.k):.4f}", flush=True)

    # FAISS with the same lists, code size and re-ranking.
    import faiss

    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(args.dim)
    ivfpq = faiss.IndexIVFPQ(quantizer, args.dim, partitions, sub_vectors, 8, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[rng.choice(args.rows, min(args.rows, 256 * partitions), replace=False)]
    ivfpq.train(sample)
    ivfpq.nprobe = rquery.DEFAULT_NPROBES
    faiss_index = faiss.IndexRefineFlat(ivfpq)  # adds to both the PQ lists and the exact re-ranking store
    faiss_index.add(vectors)
    faiss_index.k_factor = float(rquery.DEFAULT_REFINE_FACTOR)
    print(f"faiss build {time.perf_counter() - t0:.1f}s ({partitions} lists, {sub_vectors} x 8-bit codes)", flush=True)
    f_found, f_times = timed(lambda q: faiss_index.search(q[None, :], args.k)[1][0], list(queries))
    faiss_p50, faiss_recall = pct(f_times, 50), recall(f_found, truth, args.k)
    print(f"faiss IVFPQ+refine nprobe={ivfpq.nprobe}: p50 {faiss_p50} ms, p95 {pct(f_times, 95)} ms, "
          f"recall@{args.k} {faiss_recall:.4f}", flush=True)

    def brute(q):
        scores = vectors @ q
        top = np.argpartition(-scores, args.k)[: args.k]
        return top[np.argsort(-scores[top])]

    b_found, b_times = timed(brute, list(queries[:50]))
    brute_p50 = pct(b_times, 50)
    print(f"numpy brute force: p50 {brute_p50} ms, recall {recall(b_found, truth[:50], args.k):.4f}", flush=True)

    # Text query end to end through rsclip.query (table metadata names the ViT-B/32 model).
    text_p50 = None
    if not args.no_text:
        texts = ["airport", "storage tanks", "a river crossing farmland", "dense residential area", "harbour with boats",
                 "golf course", "bare land", "stadium", "railway station", "forest"]
        cpu0 = time.process_time()
        _, t_times = timed(lambda s: rquery.query(db, s, k=args.k, resident=True), texts * 2, warmup=2)
        cpu_ms = (time.process_time() - cpu0) * 1000.0 / (len(texts) * 2 + 2)
        text_p50 = pct(t_times, 50)
        import torch

        print(f"text query end to end (ViT-B/32 text tower, CPU, {torch.get_num_threads()} torch threads): "
              f"p50 {text_p50} ms, p95 {pct(t_times, 95)} ms, {cpu_ms:.0f} ms CPU time per query", flush=True)

    # bbox-filtered queries.
    boxes = []
    for _ in range(min(args.queries, 100)):
        w, h = rng.uniform(10, 90), rng.uniform(10, 90)
        lon, lat = rng.uniform(-180, 180 - w), rng.uniform(-90, 90 - h)
        boxes.append((lon, lat, lon + w, lat + h))
    masks = [
        (bounds[tiles.LON_MIN] <= b[2]) & (bounds[tiles.LON_MAX] >= b[0])
        & (bounds[tiles.LAT_MIN] <= b[3]) & (bounds[tiles.LAT_MAX] >= b[1])
        for b in boxes
    ]
    b_truth = [exact_topk(vectors, queries[i : i + 1], args.k, masks[i])[0] for i in range(len(boxes))]
    items = list(range(len(boxes)))
    bb_found, bb_times = timed(
        lambda i: rows_of(rquery.search(rquery.LanceSearcher(table), queries[i], args.k, Filters.of(bbox=boxes[i]))), items
    )
    bbox_p50, bbox_recall = pct(bb_times, 50), recall(bb_found, b_truth, args.k)
    sel = np.array([m.mean() for m in masks])
    exact = np.array([m.sum() <= rquery.EXACT_FILTER_ROWS for m in masks])
    print(f"bbox queries: p50 {bbox_p50} ms, p95 {pct(bb_times, 95)} ms, recall@{args.k} {bbox_recall:.4f} "
          f"(boxes keep {sel.min():.2%}..{sel.max():.2%} of rows; {exact.sum()} of {len(boxes)} answered by exact scan)",
          flush=True)
    for name, m in (("exact-scan boxes", exact), ("ANN-prefilter boxes", ~exact)):
        if m.any():
            print(f"  {name}: p50 {pct(bb_times[m], 50)} ms, recall "
                  f"{recall([bb_found[i] for i in np.flatnonzero(m)], [b_truth[i] for i in np.flatnonzero(m)], args.k):.4f}")
    rb_found, rb_times = timed(
        lambda i: rows_of(rquery.search(rquery.searcher_for(table, resident=True), queries[i], args.k, Filters.of(bbox=boxes[i]))), items)
    rbbox_p50, rbbox_recall = pct(rb_times, 50), recall(rb_found, b_truth, args.k)
    print(f"bbox queries, resident copy: p50 {rbbox_p50} ms, p95 {pct(rb_times, 95)} ms, recall@{args.k} "
          f"{rbbox_recall:.4f}", flush=True)

    # Headline: the resident path (the web app's); the Lance-only path (rsclip.query's default) beside it.
    result = {
        "rows": args.rows, "ann_p50_ms": res_p50, "ann_p95_ms": res_p95, "recall10": round(res_recall, 4),
        "faiss_p50_ms": faiss_p50, "faiss_recall10": round(faiss_recall, 4), "brute_p50_ms": brute_p50,
        "text_e2e_p50_ms": text_p50, "bbox_p50_ms": rbbox_p50, "bbox_recall10": round(rbbox_recall, 4),
        "lance_ann_p50_ms": ann_p50, "lance_ann_p95_ms": ann_p95, "lance_recall10": round(ann_recall, 4),
        "lance_bbox_p50_ms": bbox_p50, "lance_bbox_recall10": round(bbox_recall, 4),
        "resident_load_s": round(resident_load_s, 2), "resident_mb": round(resident_mb),
    }
    if not args.db:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
