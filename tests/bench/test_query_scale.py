"""bench/query_scale.py (what bench/query.py runs for tables too large for memory: 10M rows here) on a small
table, its size threshold lowered: the streaming exact answers, the compact copy and every arm run, filters
stay exact, and the searches read the table as ``rsclip.query`` and the services do. Nothing here is timed."""

from __future__ import annotations

from bench import common, query, query_scale
from rsclip.table import snapshots


def test_the_streaming_benchmark_runs_small_with_exact_filters_and_the_services_table_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(query_scale, "IN_MEMORY_ROWS", 1_000)
    monkeypatch.setattr(common, "settle", lambda say, **kw: None)  # a busy machine is no reason to wait here
    reads = []
    read_table = snapshots.read_table
    monkeypatch.setattr(snapshots, "read_table", lambda *a: reads.append(a) or read_table(*a))
    queries = 20
    out = query.main(["--rows", "30000", "--queries", str(queries), "--repeats", "1", "--no-text", "--lance-index",
                      "--db", str(tmp_path / "db")])
    assert out["rows"] == 30_000 and out["compact_bytes_per_row"] < 400
    assert out["bbox1_recall10"] == 1.0 and out["bbox001_recall10"] == 1.0  # a filter never loses a row
    assert out["compact_recall10"] >= 0.9 and out["compact_ood_recall10"] >= 0.9 and out["lance_recall10"] >= 0.9
    assert {"qps_t1", "qps_t8", "concurrency_gain", "compact_ann_p50_ms"} <= set(out)
    assert set(out["targets"]) == {f"{t.key} {t.op} {t.threshold:g}" for t in query_scale.TARGETS}
    # every search asked for the table as the services do (a kept snapshot), not a table opened once
    assert len(reads) >= 3 * queries
