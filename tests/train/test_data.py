"""rsclip.train.data and rsclip.train.transforms: RSICD and manifest readers (local and s3://), augmentation,
the Ray Data decode stage, and seeded random views."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from infra.local_stack import free_port
from rsclip.runtime import storage
from rsclip.model.clip import ImagePreprocess, load_model, normalize_pixels
from rsclip.errors import InvalidInput
from rsclip.train import data, transforms
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
    cfg = transforms.StageConfig(height=64, width=64, preprocess=ImagePreprocess(64, 64, 64), image_aug=False)
    batch = {k: np.array([s[k] for s in both], dtype=object) for k in both[0]}
    out = transforms.decode_batch(batch, cfg)
    assert out["image"].shape == (7, 64, 64, 3) and out["image"].dtype == np.uint8
    assert out["ok"].tolist() == [True, True, False, True, True, True, True]
    assert not out["image"][2].any() and out["image"][5].any()


def _batch(samples: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([s[k] for s in samples], dtype=object) for k in samples[0]}


def test_views_depend_on_the_seed_the_epoch_and_the_sample_only():
    """Same seed, epoch and sample: the same view and caption, in whatever batch; another epoch or another
    seed: other views."""
    samples = data.read_samples([str(RSICD_DIR)], split="train")[::200][:8]
    cfg = transforms.StageConfig(height=96, width=96, preprocess=ImagePreprocess(96, 96, 96), seed=7)
    first = transforms.decode_batch(_batch(samples), cfg)
    again = transforms.decode_batch(_batch(samples), cfg)
    np.testing.assert_array_equal(first["image"], again["image"])
    assert list(first["caption"]) == list(again["caption"]) and first["ok"].all()
    part = transforms.decode_batch(_batch(samples[::-1][:3]), cfg)  # other batch, other positions
    np.testing.assert_array_equal(part["image"], first["image"][::-1][:3])
    assert list(part["caption"]) == list(first["caption"][::-1][:3])

    def differs(other):
        images = all(not np.array_equal(a, b) for a, b in zip(first["image"], other["image"]))
        return images and list(other["caption"]) != list(first["caption"])

    epoch1 = transforms.decode_batch(_batch(samples), cfg.for_epoch(1))
    assert differs(epoch1)
    np.testing.assert_array_equal(epoch1["image"], transforms.decode_batch(_batch(samples), cfg.for_epoch(1))["image"])
    assert differs(transforms.decode_batch(_batch(samples), transforms.StageConfig(**{**cfg.__dict__, "seed": 8})))
    # without augmentation the epoch and seed change nothing but the caption
    plain = transforms.StageConfig(**{**cfg.__dict__, "image_aug": False, "text_aug": False})
    np.testing.assert_array_equal(transforms.decode_batch(_batch(samples), plain)["image"],
                                  transforms.decode_batch(_batch(samples), plain.for_epoch(3))["image"])


def test_epoch_shards_are_equal_disjoint_seeded_and_change_per_epoch():
    samples = [{"name": f"s{i}"} for i in range(103)]

    def shares(seed, epoch):
        return [[s["name"] for s in transforms.epoch_shard(samples, seed=seed, epoch=epoch, rank=r, world=4)]
                for r in range(4)]

    first = shares(0, 0)
    assert [len(s) for s in first] == [25] * 4
    assert len({n for s in first for n in s}) == 100
    assert shares(0, 0) == first
    assert shares(0, 1) != first and shares(1, 0) != first
    assert [s["name"] for s in transforms.epoch_shard(samples, seed=0, epoch=0)] != [s["name"] for s in samples]


def test_unreadable_sources_are_invalid_input(tmp_path):
    (tmp_path / "dataset_rsicd.json").write_text('{"images": [{"filename": "../../etc/passwd"}]}')
    with pytest.raises(InvalidInput, match="plain 'filename'"):
        data.read_rsicd(str(tmp_path))
    (tmp_path / "m.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInput):
        data.read_samples([str(tmp_path / "m.csv")])
    with pytest.raises(InvalidInput, match="not a dataset"):
        data.read_source(str(tmp_path / "nothing"))


def _square(n=150, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, n, 3), dtype=np.uint8)


def test_augment_reduces_to_prepare_when_switched_off():
    img = _square()
    off = transforms.AugmentConfig(crop_scale=(1, 1), crop_ratio=(1, 1), hflip=0, vflip=0, rotate90=False,
                             brightness=0, contrast=0, saturation=0)
    cfg = transforms.StageConfig(preprocess=PRE, augment=off)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(transforms.augment_image(img, cfg, rng), transforms.prepare_image(img, cfg))
    flip = transforms.StageConfig(preprocess=PRE, augment=transforms.AugmentConfig(**{**off.__dict__, "hflip": 1.0, "vflip": 1.0}))
    np.testing.assert_array_equal(transforms.augment_image(img, flip, rng), transforms.prepare_image(img, cfg)[::-1, ::-1])


def test_augment_is_random_and_keeps_shape():
    img = _square()
    cfg = transforms.StageConfig(preprocess=PRE)
    rng = np.random.default_rng(1)
    views = [transforms.augment_image(img, cfg, rng) for _ in range(4)]
    assert all(v.shape == (224, 224, 3) and v.dtype == np.uint8 for v in views)
    assert len({v.tobytes() for v in views}) == 4
    grey = np.full((8, 8, 3), 100, np.uint8)
    jit = transforms.jitter_colour(grey, transforms.AugmentConfig(contrast=0, saturation=0), np.random.default_rng(2))
    assert jit.std() == 0 and 80 <= jit[0, 0, 0] <= 120  # brightness only scales, within +-20 %


def test_prepared_pixels_equal_the_encoders_preprocessing(tiny_model, rsicd_files):
    enc = load_model(tiny_model)
    cfg = transforms.StageConfig.from_preprocess(enc.preprocess_config, image_aug=False)
    imgs = [transforms.load_image({"image": str(f), "image_bytes": b""}) for f in rsicd_files[:3]]
    ours = normalize_pixels(np.stack([transforms.prepare_image(i, cfg) for i in imgs]), enc.preprocess_config,
                            channels_last=True)
    torch.testing.assert_close(ours, enc.preprocess(imgs), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_ray_dataset_decodes_and_augments(tmp_path, monkeypatch):
    import ray

    samples = data.read_samples([str(RSICD_DIR)], split="val")[:40]
    samples.append({**samples[0], "image": str(tmp_path / "missing.jpg"), "name": "missing.jpg"})
    # the workers inherit an object store that nobody serves (for the failing dataset below)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    ray.init(address="local", num_cpus=2, object_store_memory=500_000_000, include_dashboard=False)
    try:
        cfg = transforms.StageConfig(height=96, width=96, preprocess=ImagePreprocess(96, 96, 96))
        rows = transforms.build_dataset(samples, cfg, batch_size=16).take_all()
        # an exception out of a decode task (not an unreadable image: those are rows with ok=False) is
        # retried, and fails the dataset only when it persists; here the object store is unreachable
        broken = [{**samples[0], "image": "s3://nobody-serves-this/x.jpg", "name": "x.jpg"}]
        with pytest.raises(Exception, match=f"{transforms.DECODE_TASK_RETRIES + 1}/{transforms.DECODE_TASK_RETRIES + 1} "
                                            "attempts") as failed:
            transforms.build_dataset(broken, cfg, batch_size=16).take_all()
        assert "StoreUnavailable" in str(failed.value)
    finally:
        ray.shutdown()
    assert len(rows) == 41 and sum(not r["ok"] for r in rows) == 1
    assert all(r["image"].shape == (96, 96, 3) for r in rows)
    captions = {c for s in samples for c in s["captions"]}
    assert all(r["caption"] in captions for r in rows)
    # rows come in the order of the samples, with the views decode_batch gives them, whatever the tasks
    assert [str(r["label"]) for r in rows] == [s["label"] for s in samples]
    direct = transforms.decode_batch(_batch(samples), cfg)
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), direct["image"])
    assert [r["caption"] for r in rows] == list(direct["caption"])


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
