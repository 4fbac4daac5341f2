"""bench/pipeline.py: its stand-in model reaches the embedder only where the embedder module is imported, its
CPU accounting counts reaped children, and its runs end with a JSON line holding every figure.

Nothing here judges a figure: a benchmark is not a test. The full run (SeaweedFS, local Ray) is marked slow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from bench import pipeline
from tests.helpers import ROOT

# runs a bench script without bench/common.py's wait for a quiet machine (up to 90 s on a shared one)
UNSETTLED = ("import runpy, sys; sys.path.insert(0, {root!r}); from bench import common; "
             "common.settle = lambda say, **kw: None; sys.argv = {argv!r}; "
             "runpy.run_path('bench/pipeline.py', run_name='__main__')")


def run_bench(*argv: str, timeout: float) -> dict:
    code = UNSETTLED.format(root=str(ROOT), argv=["bench/pipeline.py", *argv])
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_the_standin_is_bound_when_the_embedder_module_is_imported_and_the_hook_imports_no_torch(tmp_path):
    from rsclip.testing import build_tiny_clip

    model = build_tiny_clip(tmp_path / "tiny", embed_dim=pipeline.DIM)
    check = f"""
import sys
import numpy as np
from bench.pipeline import StandIn, install_standin
install_standin()
assert "torch" not in sys.modules and "rsclip.ingest.embedder" not in sys.modules
from rsclip.ingest.embedder import ImageEmbedder
embedder = ImageEmbedder({str(model)!r})
assert isinstance(embedder.encoder, StandIn) and embedder.dim == {pipeline.DIM}
rows = embedder.encoder.encode_images([np.zeros((8, 8, 3), np.uint8)] * 5)
assert rows.shape == (5, {pipeline.DIM}) and (rows.sum(1) == 1).all() and (rows.max(1) == 1).all()
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_the_cpu_of_a_reaped_child_counts_in_the_tree_and_proc_agrees_with_psutil():
    before = pipeline.tree_cpu_s()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"],
                   check=True, timeout=60)
    grown = pipeline.tree_cpu_s() - before
    assert grown >= 0.45
    assert abs(pipeline.tree_cpu_s() - pipeline._proc_tree_cpu_s(os.getpid())) < 0.2


def test_the_listing_only_run_reports_each_size_and_the_memory_ratio():
    line = run_bench("--listing-only", "--chips", "20", "200", "--repeats", "1", "--warmup", "0", timeout=300)
    assert line["bench"] == "pipeline" and line["files"] == [20, 200]
    for key in ("driver20_driver_rss_mib", "tasks20_driver_rss_mib", "tasks200_driver_rss_mib",
                "tasks200_cpu_us_per_file", "listing_rss_ratio", "in_driver_rss_ratio", "tasks_vs_driver_rss"):
        assert line[key] > 0, key
    assert set(line["targets"]) == {"listing_rss_ratio <= 1.2"}


@pytest.mark.slow
def test_a_tiny_run_of_the_job_with_the_standin_ends_with_every_figure():
    line = run_bench("--chips", "32", "64", "--cogs", "1", "--chip-side", "96", "--model-ms", "8000",
                     "--set", "files_per_task=4", "--repeats", "1", "--warmup", "0", timeout=900)
    for arm in ("c32", "c64", "c64slow", "cog"):
        for figure in ("tiles_per_cpu_s", "tiles_per_core_s", "driver_us_per_tile", "driver_rss_mib",
                       "driver_rss_half_mib", "driver_rss_end_mib", "driver_shmem_end_mib", "received_b_per_tile",
                       "commits", "commit_s", "cpu_s", "s3_cpu_us_per_tile"):
            assert f"{arm}_{figure}" in line and f"{arm}_{figure}_min" in line, (arm, figure)
        assert line[f"{arm}_tiles_per_cpu_s"] > 0 and line[f"{arm}_commits"] >= 1
    assert line["driver_rss_ratio"] > 0 and line["chips"] == [32, 64] and line["cogs"] == 1 and line["chip_side"] == 96
    assert line["set"] == {"files_per_task": 4}  # the job's settings the figures were measured under
    assert "c64_tiles_per_cpu_s >= 600" in line["targets"] and "driver_rss_ratio <= 1.2" in line["targets"]
    assert line["received_source"] in ("summary", "measured at TileWriter.write")
    assert line["c64slow_wall_s"] > line["c64_wall_s"] and line["model_ms"] == 8000
    for key in ("driver_cpu_per_wall_s", "driver_marginal_us_per_tile", "driver_us_per_tile_at_h200"):
        assert key in line and not math.isnan(line[key]), key


def test_the_standin_takes_the_milliseconds_it_is_given_per_batch(tmp_path, monkeypatch):
    import time

    from rsclip.testing import build_tiny_clip

    model = build_tiny_clip(tmp_path / "tiny", embed_dim=pipeline.DIM)
    monkeypatch.setenv(pipeline.MODEL_MS_VARIABLE, "150")
    slow = pipeline.load_standin(str(model))
    start = time.monotonic()
    rows = slow.encode_images([None] * 3)
    assert time.monotonic() - start >= 0.15 and rows.shape == (3, pipeline.DIM)
    monkeypatch.delenv(pipeline.MODEL_MS_VARIABLE)
    assert pipeline.load_standin(str(model)).seconds_per_batch == 0.0
    assert pipeline.runtime_env(150)["env_vars"] == {pipeline.MODEL_MS_VARIABLE: "150"}


def test_the_driver_split_recovers_the_time_driven_and_the_per_tile_cpu():
    """Driver CPU = fixed + a x wall + b x tiles in every run: the split gives a, b and a / rate + b back."""
    a, b_us, fixed = [0.07, 0.05], [30.0, 40.0], 4.0

    def cpu(r, wall, tiles):
        return fixed + a[r] * wall + b_us[r] * 1e-6 * tiles
    walls = {"c100": [10.0, 12.0], "c1000": [60.0, 80.0], "c1000slow": [150.0, 170.0]}
    figures = {f"{arm}_wall_s": w for arm, w in walls.items()}
    for arm, w in walls.items():
        n = int(arm[1:].removesuffix("slow"))
        figures[f"{arm}_driver_cpu_s"] = [cpu(r, w[r], n) for r in range(2)]
    args = type("Args", (), {"model_ms": 500.0, "chips": [100, 1000]})()
    got = pipeline.driver_split(figures, args)
    assert got["driver_cpu_per_wall_s"] == pytest.approx(a)
    assert got["driver_marginal_us_per_tile"] == pytest.approx(b_us)
    for gpu, rate in pipeline.GPU_RATES.items():
        assert got[f"driver_us_per_tile_at_{gpu}"] == pytest.approx([1e6 * x / rate + y for x, y in zip(a, b_us)])
    args.chips = [1000]
    assert set(pipeline.driver_split(figures, args)) == {"driver_cpu_per_wall_s"}
    args.model_ms = 0.0
    assert pipeline.driver_split(figures, args) == {}


def test_the_sampler_keeps_the_cpu_of_a_child_that_exited():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    with pipeline.TreeSampler(every_s=0.05) as sampler:
        before, _ = sampler.totals()
        subprocess.run([sys.executable, "-c", burn], check=True, timeout=60)
        after, by_title = sampler.totals()
    assert after - before >= 0.4 and sampler.overhead_s > 0
    assert by_title
    assert len(sampler.rss) >= 2 and all(mib > 0 for _, mib in sampler.rss)
    assert sampler.rss_at(sampler.rss[-1][0]) == sampler.rss[-1][1]
