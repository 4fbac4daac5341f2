"""Fine-tuning end to end on real RSICD scenes: learning, stop + --resume, export, evaluation job, and a
``ray job submit`` run on a real head whose training worker is killed mid-run (FailureConfig)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsclip.runtime import storage
from rsclip.model.clip import load_model
from rsclip.errors import InvalidInput
from rsclip.testing import build_small_clip
from rsclip.train import data as rdata
from rsclip.train import metrics as rmetrics
from rsclip.train import transforms
from rsclip.train.config import TrainConfig
from rsclip.train.driver import REGISTERED
from rsclip.train.loop import lr_factor, steps_per_epoch
from tests.helpers import RSICD_DIR
from tests.helpers.job_logs import run_streaming

ROOT = Path(__file__).resolve().parents[2]
FAST_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # ray.train.report waits for the controller's poll
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}
SIZE = 64  # a 64-pixel CLIP: the real pipeline and the real scenes, at a cost 2 CPUs can afford
TRAIN_BATCH = 32


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return build_small_clip(tmp_path_factory.mktemp("models") / "clip64", size=SIZE)


def _finetune(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **FAST_ENV}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "jobs/finetune.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _history(output: str) -> list[dict]:
    return rmetrics.read_history(f"{output}/metrics.jsonl")


def test_config_file_flags_and_schedule(tmp_path):
    sys.path.insert(0, str(ROOT / "jobs"))
    from finetune import parse_args

    (tmp_path / "c.yaml").write_text("data: [a]\noutput: o\nepochs: 7\nlr: 0.001\nimage_aug: false\n")
    cfg, _ = parse_args(["--config", str(tmp_path / "c.yaml"), "--epochs", "3", "--data", "b", "--text-aug"])
    assert (cfg.epochs, cfg.lr, cfg.image_aug, cfg.text_aug) == (3, 0.001, False, True)
    assert cfg.data == [os.path.abspath("b")]  # local paths absolute: the workers run in another folder
    cfg, _ = parse_args(["--data", "a", "--output", "o", "--betas", "0.8", "0.95", "--no-resume"])
    assert (cfg.betas, cfg.resume, cfg.output) == ((0.8, 0.95), False, os.path.abspath("o"))
    with pytest.raises(InvalidInput, match="unknown"):
        TrainConfig.from_dict({"data": ["a"], "output": "o", "learning_rate": 1})
    with pytest.raises(InvalidInput, match="epochs"):
        TrainConfig.from_dict({"data": ["a"], "output": "o", "epochs": "ten"})
    with pytest.raises(InvalidInput, match="both towers"):
        TrainConfig(data=["a"], output="o", freeze_image=True, freeze_text=True).validate()
    (tmp_path / "bad.yaml").write_text("data: [a\n")
    with pytest.raises(InvalidInput, match="bad.yaml"):
        parse_args(["--config", str(tmp_path / "bad.yaml")])
    # the job reports a bad setting in one line and exit status 2, before any Ray start-up
    res = _finetune(["--data", "a", "--output", str(tmp_path / "o"), "--batch-size", "0"], timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == "finetune: error: batch_size must be at least 1"
    assert steps_per_epoch(1800, TrainConfig(batch_size=64, num_workers=2)) == 15
    assert [round(lr_factor(s, 2, 10), 3) for s in (0, 1, 2, 6, 10, 12)] == [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.slow
def test_learns_stops_resumes_and_exports(small_model, tmp_path):
    """Train from scratch on the real scenes; stop after a few steps; --resume continues at the same step and
    data position; the val zero-shot top-1 ends clearly above chance; the export loads everywhere."""
    out = str(tmp_path / "run")
    epochs, stop_at = 6, 5
    common = ["--data", str(RSICD_DIR), "--output", out, "--model", str(small_model), "--epochs", str(epochs),
              "--batch-size", str(TRAIN_BATCH), "--lr", "2e-3", "--warmup-steps", "20", "--weight-decay", "0.1",
              "--no-image-aug", "--cpus-per-worker", "1", "--data-cpus", "0.5"]
    first = _finetune([*common, "--max-steps", str(stop_at)])
    assert first.returncode == 0, first.stderr[-4000:]
    ckpts = sorted(p.name for p in (tmp_path / "run" / "ray" / "run").glob("epoch*"))
    assert ckpts and ckpts[-1] == f"epoch0000-step{stop_at:07d}-partial"
    assert not _history(out)  # stopped inside the first epoch

    again = _finetune(common)  # the same output without --resume is refused, not overwritten
    assert again.returncode == 2 and "--resume" in again.stderr

    second = _finetune([*common, "--resume"])
    assert second.returncode == 0, second.stderr[-4000:]
    history = _history(out)
    spe = steps_per_epoch(1800, TrainConfig(batch_size=TRAIN_BATCH))
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert [r["step"] for r in history] == [spe * e for e in range(1, epochs + 1)]
    # the resumed first epoch trained only the rows after the data position it stopped at
    assert history[0]["train_samples"] == 1800 - stop_at * TRAIN_BATCH
    assert all(r["train_samples"] == 1800 and r["skipped_images"] == 0 for r in history[1:])
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.3
    best = max(r["val_top1"] for r in history)
    # chance is 1/30 = 0.033 with a spread of about 0.01 over 300 val images: twice chance is > 3 sigma
    assert best >= 2 / 30, history
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000

    # export: plain transformers and rsclip.load_model read it, and it holds the best epoch's weights
    from transformers import CLIPModel

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_metrics"]["val_top1"] == pytest.approx(best)
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "train_state.pt").exists()
    plain = CLIPModel.from_pretrained(model_dir)
    enc = load_model(model_dir, device="cpu")
    val = rdata.read_samples([str(RSICD_DIR)], split="val")[:8]
    images, _ = transforms.decode_samples(val, transforms.StageConfig.from_preprocess(enc.preprocess_config,
                                                                                     image_aug=False))
    with torch.no_grad():
        ref = plain.get_image_features(pixel_values=enc.preprocess(images)).pooler_output
    np.testing.assert_allclose(enc.encode_images(images), torch.nn.functional.normalize(ref, dim=-1).numpy(),
                               atol=1e-5)
    start = load_model(small_model, device="cpu").encode_images(images)
    assert np.abs(enc.encode_images(images) - start).max() > 0.05  # it did train

    # the evaluation job on the exported model reproduces the best epoch's validation metrics
    res = subprocess.run([sys.executable, "jobs/evaluate.py", "--model", str(model_dir), "--data", str(RSICD_DIR),
                          "--split", "val", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(got) == set(rmetrics.METRIC_KEYS) and got["n_images"] == 300
    # the exported checkpoint is the best by val_top1 (the later one on a tie)
    best_record = next(r for r in history if r["step"] == summary["best_metrics"]["step"])
    assert best_record["val_top1"] == best
    for key in ("top1", "top5", "top1_ensemble", "i2t_r1", "t2i_r10", "mR"):
        assert got[key] == pytest.approx(best_record[f"val_{key}"], abs=1.5 / 300), key


def _write_manifest(uri: str, samples: list[dict]) -> None:
    lines = [json.dumps({"image": s["image"], "captions": s["captions"], "label": s["label"], "split": s["split"]})
             for s in samples]
    rmetrics.write_text(uri, "\n".join(lines) + "\n")


def _train_workers(address: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid]


def test_submitted_job_survives_a_killed_worker(ray_head, small_model, s3_prefix):
    """``ray job submit`` to a real head: 2 DDP workers, data and output on S3; one training worker is
    SIGKILLed as soon as the job reports its first registered checkpoint, and the run still completes from
    that checkpoint."""
    samples = rdata.read_samples([str(RSICD_DIR)])
    pick = [s for s in samples if s["split"] == "train"][::9] + [s for s in samples if s["split"] == "val"][::10]
    _write_manifest(f"{s3_prefix}/data/manifest.jsonl", pick)  # 200 train + 30 val rows
    out = f"{s3_prefix}/run"
    fs, _ = storage.filesystem(out)
    registered = re.compile(REGISTERED.format(name=r"(\S+)"))
    killed: list[tuple[str, int]] = []

    def kill_on_first_registered_checkpoint(line: str) -> None:
        found = registered.search(line)
        if found and not killed:  # Ray Train resumes from a registered checkpoint, never from a later one
            pid = _train_workers(ray_head.dashboard_url)[-1]
            os.kill(pid, signal.SIGKILL)
            killed.append((found.group(1), pid))

    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.dashboard_url,
              "--working-dir", str(ROOT), "--"]
    status, lines = run_streaming([
        *submit, "python", "jobs/finetune.py", "--data", f"{s3_prefix}/data/manifest.jsonl", "--output", out,
        "--model", str(small_model), "--num-workers", "2", "--cpus-per-worker", "0.5", "--data-cpus", "0.25",
        "--epochs", "2", "--batch-size", "10", "--lr", "1e-3", "--warmup-steps", "2",
        "--checkpoint-every-steps", "3", "--max-failures", "2"],
        env={**ray_head.process_env(), **FAST_ENV}, cwd=ROOT, timeout=500, on_line=kill_on_first_registered_checkpoint)
    logs = "".join(lines)
    assert killed, ("the job reported no registered checkpoint", logs[-3000:])
    assert killed[0][0] == "epoch0000-step0000003-partial"
    assert status == 0, logs[-3000:]
    history = _history(out)
    spe = steps_per_epoch(200, TrainConfig(batch_size=10, num_workers=2))
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["step"] == 2 * spe
    summary = json.loads(fs.cat(out.split("://", 1)[1] + "/summary.json"))
    assert summary["model"] == f"{out}/model"
    load_model(f"{out}/model", device="cpu")  # the S3 export works as a --model
    resumed = [int(m) for m in re.findall(r"resumed at epoch \d+, step (\d+)", logs)]
    assert resumed and min(resumed) >= 3, logs[-3000:]  # restarted from a checkpoint, not from scratch
    assert killed[0][1] not in _train_workers(ray_head.dashboard_url)
