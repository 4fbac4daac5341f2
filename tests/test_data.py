"""rsclip.data: RSICD and manifest readers (local and s3://), augmentation, the Ray Data decode stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rsclip.core import storage
from rsclip.train import data
from rsclip.core.model import ImagePreprocess, load_model, normalize_pixels
from tests.helpers import RSICD_DIR, RSICD_IMAGES

PRE = ImagePreprocess()


def test_read_rsicd_folder_or_json():
    by_dir = data.read_rsicd(str(RSICD_DIR))
    by_json = data.read_source(str(RSICD_DIR / "dataset_rsicd.json"))
    assert by_dir == by_json and len(by_dir) == 2100
    assert sum(s["split"] == "train" for s in by_dir) == 1800
    assert len(data.read_samples([str(RSICD_DIR)], split="val")) == 300
    first = by_dir[0]
    assert first["image"] == str(RSICD_IMAGES / first["name"]) and first["label"] == data.class_from_filename(first["name"])
    assert len(first["captions"]) == 5 and len(data.class_names(by_dir)) == 30
    with pytest.raises(ValueError, match="not a dataset"):
        data.read_source(str(RSICD_IMAGES))


def test_manifests_parquet_csv_jsonl_local_and_s3(tmp_path, s3_prefix, rsicd_files):
    files = rsicd_files[:6]
    pq = pd.DataFrame({
        "image_bytes": [f.read_bytes() for f in files[:2]] + [b"not an image"],
        "captions": [["a", "b"], ["c"], ["d"]], "label": ["x", "y", "z"], "split": ["train", "val", "train"],
    })
    pq.to_parquet(tmp_path / "m.parquet")
    (tmp_path / "imgs").mkdir()
    for f in files[2:4]:
        (tmp_path / "imgs" / f.name).write_bytes(f.read_bytes())
    pd.DataFrame({"image": [f"imgs/{f.name}" for f in files[2:4]], "caption": ["one caption", '["l1", "l2"]']}
                 ).to_csv(tmp_path / "m.csv", index=False)
    fs, root = storage.filesystem(s3_prefix)
    for f in files[4:6]:
        fs.put_file(str(f), f"{root}/img/{f.name}")
    lines = [json.dumps({"path": f"img/{f.name}", "text": "remote", "class": "r"}) for f in files[4:6]]
    with fs.open(f"{root}/m.jsonl", "wb") as fh:
        fh.write("\n".join(lines).encode())

    both = data.read_samples([str(tmp_path / "m.parquet"), str(tmp_path / "m.csv"), f"{s3_prefix}/m.jsonl"])
    assert len(both) == 7
    assert [s["captions"] for s in both[3:5]] == [["one caption"], ["l1", "l2"]]
    assert both[3]["image"] == str(tmp_path / "imgs" / files[2].name) and both[3]["split"] == "train"
    assert both[5]["image"] == f"{s3_prefix}/img/{files[4].name}" and both[5]["label"] == "r"
    assert len(data.read_samples([str(tmp_path / "m.parquet")], split="val")) == 1

    # the decode stage reads bytes, local paths and s3 objects; the broken image is flagged, not fatal
    cfg = data.StageConfig(height=64, width=64, preprocess=ImagePreprocess(64, 64, 64), image_aug=False)
    batch = {k: np.array([s[k] for s in both], dtype=object) for k in both[0]}
    out = data.decode_batch(batch, cfg)
    assert out["image"].shape == (7, 64, 64, 3) and out["image"].dtype == np.uint8
    assert out["ok"].tolist() == [True, True, False, True, True, True, True]
    assert not out["image"][2].any() and out["image"][5].any()


def _square(n=150, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, n, 3), dtype=np.uint8)


def test_augment_reduces_to_prepare_when_switched_off():
    img = _square()
    off = data.AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), hflip=0, vflip=0, rotate90=False,
                             brightness=0, contrast=0, saturation=0)
    cfg = data.StageConfig(preprocess=PRE, augment=off)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(data.augment_image(img, cfg, rng), data.prepare_image(img, cfg))
    flip = data.StageConfig(preprocess=PRE, augment=data.AugmentConfig(**{**off.__dict__, "hflip": 1.0, "vflip": 1.0}))
    np.testing.assert_array_equal(data.augment_image(img, flip, rng), data.prepare_image(img, cfg)[::-1, ::-1])


def test_augment_is_random_and_keeps_shape():
    img = _square()
    cfg = data.StageConfig(preprocess=PRE)
    rng = np.random.default_rng(1)
    views = [data.augment_image(img, cfg, rng) for _ in range(4)]
    assert all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in views)
    assert len({v.tobytes() for v in views}) == 4
    grey = np.full((8, 8, 3), 100, np.uint8)
    jit = data.jitter_colour(grey, data.AugmentConfig(contrast=0, saturation=0), np.random.default_rng(2))
    assert jit.std() == 0 and 80 <= jit[0, 0, 0] <= 120  # brightness only scales, within +-20 %


def test_prepared_pixels_equal_the_encoders_preprocessing(tiny_model, rsicd_files):
    enc = load_model(tiny_model)
    cfg = data.StageConfig.from_preprocess(enc.preprocess_config, image_aug=False)
    imgs = [data.load_image({"image": str(f), "image_bytes": b""}) for f in rsicd_files[:3]]
    ours = normalize_pixels(np.stack([data.prepare_image(i, cfg) for i in imgs]), enc.preprocess_config,
                            channels_last=True)
    torch.testing.assert_close(ours, enc.preprocess(imgs), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_ray_dataset_decodes_and_augments(tmp_path):
    import ray

    samples = data.read_samples([str(RSICD_DIR)], split="val")[:40]
    samples.append({**samples[0], "image": str(tmp_path / "missing.jpg"), "name": "missing.jpg"})
    ray.init(address="local", num_cpus=2, object_store_memory=500_000_000, include_dashboard=False)
    try:
        cfg = data.StageConfig(height=96, width=96, preprocess=ImagePreprocess(96, 96, 96))
        rows = data.build_dataset(samples, cfg, batch_size=16).take_all()
        # an exception out of a decode task (not an unreadable image: those are rows with ok=False) is
        # retried, and fails the dataset only when it persists; here the OS refuses an over-long file name
        broken = [{**samples[0], "image": str(tmp_path / ("x" * 300 + ".jpg")), "name": "long.jpg"}]
        with pytest.raises(Exception, match=f"{data.DECODE_TASK_RETRIES + 1}/{data.DECODE_TASK_RETRIES + 1} "
                                            "attempts") as failed:
            data.build_dataset(broken, cfg, batch_size=16).take_all()
        assert "File name too long" in str(failed.value)
    finally:
        ray.shutdown()
    assert len(rows) == 41 and sum(not r["ok"] for r in rows) == 1
    assert all(r["image"].shape == (96, 96, 3) for r in rows)
    captions = {c for s in samples for c in s["captions"]}
    assert all(r["caption"] in captions for r in rows)


def test_s3fs_import_is_retried_when_another_thread_leaves_it_half_done(monkeypatch):
    """A Ray worker's background thread importing aiohttp made aiobotocore's import fail with AttributeError
    in a decode task; the race cannot be produced on demand, so the first import attempt is made to fail
    the same way."""
    import importlib.abc
    import sys

    calls = []

    class HalfInitialised(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "s3fs" and not calls:
                calls.append(name)
                raise AttributeError("module aiohttp has no attribute http_exceptions")
            return None

    for name in [m for m in sys.modules if m == "s3fs" or m.startswith("s3fs.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [HalfInitialised(), *sys.meta_path])
    fs, path = storage.filesystem("s3://bucket/key.jpg")
    assert calls == ["s3fs"] and path == "bucket/key.jpg" and type(fs).__name__ == "S3FileSystem"
