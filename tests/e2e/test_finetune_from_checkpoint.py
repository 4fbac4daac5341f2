"""Fine-tuning starts from an open_clip checkpoint named as ``--model open_clip:ARCH:URI`` (the job converts it
once, on the driver and on the workers) and exports an ordinary model that reloads with identical outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rsclip.model.clip import load_model
from rsclip.train import data as rdata
from rsclip.train.metrics import evaluate_samples
from tests.helpers import openclip_reference as ref
from tests.helpers import RSICD_DIR, ROOT, require_shared_data

SIZE = 64  # a 64-pixel tower (patch 8): the real pipeline at a cost two CPUs afford
ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def _manifest(path, per_class_train: int = 4, per_class_val: int = 2) -> list[dict]:
    """A JSONL manifest of real scenes (a few per class, both splits) with their RSICD captions."""
    require_shared_data()
    rows, seen = [], {}
    for sample in rdata.read_samples([str(RSICD_DIR)]):
        want = per_class_train if sample[rdata.SPLIT] == rdata.TRAIN else per_class_val
        key = (sample[rdata.LABEL], sample[rdata.SPLIT])
        if seen.get(key, 0) < want:
            seen[key] = seen.get(key, 0) + 1
            rows.append({"image": sample[rdata.IMAGE], "captions": sample[rdata.CAPTIONS],
                         "label": sample[rdata.LABEL], "split": sample[rdata.SPLIT]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.slow
def test_finetune_from_open_clip_checkpoint(tmp_path):
    cfg = ref.tiny_config("ViT-B-32-quickgelu")
    cfg["vision_cfg"].update(image_size=SIZE, patch_size=8)
    (tmp_path / "arch.json").write_text(json.dumps(cfg))
    torch.save(ref.random_state_dict(cfg, seed=2), tmp_path / "RemoteCLIP-tiny.pt")
    spec = f"open_clip:{tmp_path / 'arch.json'}:{tmp_path / 'RemoteCLIP-tiny.pt'}"
    _manifest(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    env = {**os.environ, **ENV, "RSCLIP_MODEL_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "jobs/finetune.py", "--data", str(tmp_path / "data.jsonl"), "--output", str(out),
         "--model", spec, "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "1",
         "--no-image-aug", "--cpus-per-worker", "1", "--data-cpus", "0.5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])

    from transformers import AutoTokenizer, CLIPModel

    export = out / "model"
    assert (export / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(export)("airport")["input_ids"] == [49406, 3259, 49407]  # open_clip's BPE
    trained = load_model(export, device="cpu")
    assert trained.preprocess_config.crop_height == SIZE
    val = rdata.read_samples([str(tmp_path / "data.jsonl")], split=rdata.VAL)
    # the export's val metrics are the ones the run measured on its best epoch: the same outputs
    again = evaluate_samples(trained, val)
    for key in ("top1", "t2i_r1", "i2t_r5", "mR"):
        assert again[key] == pytest.approx(summary["best_metrics"][f"val_{key}"], abs=1e-9), key
    images = trained.preprocess([np.zeros((SIZE, SIZE, 3), np.uint8) + 90, np.full((80, 100, 3), 200, np.uint8)])
    with torch.no_grad():
        plain = CLIPModel.from_pretrained(export).get_image_features(pixel_values=images).pooler_output
    np.testing.assert_allclose(trained.encode_pixels(images), torch.nn.functional.normalize(plain, dim=-1).numpy(),
                               atol=1e-6)
    env_cache = tmp_path / "cache" / "converted"
    start = load_model(next(p for p in env_cache.iterdir() if not p.name.startswith(".")), device="cpu")
    assert np.abs(trained.encode_pixels(images) - start.encode_pixels(images)).max() > 1e-3  # it trained
