"""``open_clip:ARCH:URI`` and ``hf-bin:SRC`` wherever a model is named: the library entry points, a tile
table (which records the model name and the converted weights' identity), the evaluation job, the command line
and, on the real S3 server, sources and destinations in object storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import rsclip
from rsclip.app.cli import main as cli_main
from rsclip.model import locations, sources
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.model.convert.converter import RECORD_FILE, canonical_spec
from rsclip.ingest.embedder import ImageEmbedder, model_spec
from rsclip.testing import build_tiny_clip
from tests.helpers import openclip_reference as ref
from tests.helpers import RSICD_DIR, ROOT, require_shared_data, spread_files


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private model cache for the module (the conversions land here)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(locations, "CACHE_DIR", path)
        yield path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny RemoteCLIP-like file: an open_clip state dict saved with torch.save, and its architecture."""
    folder = tmp_path_factory.mktemp("openclip")
    cfg = ref.tiny_config("ViT-B-32-quickgelu")
    (folder / "tiny-ViT-B-32-quickgelu.json").write_text(json.dumps(cfg))
    torch.save(ref.random_state_dict(cfg, seed=5), folder / "RemoteCLIP-tiny.pt")
    return folder / "tiny-ViT-B-32-quickgelu.json", folder / "RemoteCLIP-tiny.pt"


@pytest.fixture(scope="module")
def spec(checkpoint, cache) -> str:
    arch, path = checkpoint
    return f"open_clip:{arch}:{path}"


@pytest.fixture(scope="module")
def scenes():
    require_shared_data()
    return spread_files(sorted((RSICD_DIR / "RSICD_images").glob("*.jpg")), 6)


def test_library_entry_points(spec, scenes, tmp_path):
    enc = rsclip.load_model(spec)
    assert enc.dim == 24 and enc.preprocess_config.crop_height == 224
    frame = rsclip.classify(scenes[:2], ["airport", "beach", "forest"], model=spec)
    assert len(frame) == 2 and np.allclose(frame[["airport", "beach", "forest"]].sum(axis=1), 1.0, atol=1e-4)
    patches = rsclip.locate(scenes[0], "storage tanks", model=spec, grid=(2, 2))
    assert len(patches) == 4

    dim, preprocess = model_spec(spec)  # the embedding job's probe and mapper
    embedder = ImageEmbedder(spec)
    assert dim == embedder.dim == 24 and preprocess == enc.preprocess_config

    db = tmp_path / "db"  # a table embedded with it records the name and the converted weights
    identity = sources.model_identity(spec)
    assert identity.location == canonical_spec(spec) and str(checkpoint_path(spec)) in identity.location
    images = [np.asarray(Image.open(p).convert("RGB")) for p in scenes]
    n = len(scenes)
    rows = dict(uri=[str(p) for p in scenes], x=[0] * n, y=[0] * n, width=[150] * n, height=[150] * n,
                vector=enc.encode_images(images))
    tiles.add_tiles(tiles.create_table(db, model=spec, dim=enc.dim, identity=identity), rows)
    table = tiles.open_table(db)
    assert tiles.table_model(table) == (spec, 24) and tiles.table_weights(table) == identity
    result = rsclip.query(db, scenes[2], k=1, exclude_self=False)  # encodes with the table's model, by name
    assert result["uri"].tolist() == [str(scenes[2])]


def checkpoint_path(spec: str):
    return spec.rsplit(":", 1)[1]


def test_evaluation_job_compares_models(spec, cache, tiny_model):
    env = {**os.environ, "RSCLIP_MODEL_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "jobs/evaluate.py", "--model", spec, "--model", str(tiny_model),
                           "--data", str(RSICD_DIR), "--split", "val", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 and all(r["n_images"] == 300 for r in rows)


def test_command_line_converts(checkpoint, tmp_path, capsys, scenes):
    arch, path = checkpoint
    assert cli_main(["convert-model", str(path), str(tmp_path / "out"), "--arch", str(arch), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == str(path) and record["architecture"]["quick_gelu"] is True
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert cli_main(["classify", str(scenes[0]), "--labels", "airport", "beach", "--model",
                     str(tmp_path / "out")]) == 0  # the converted folder is an ordinary --model


def test_sources_and_destinations_on_s3(checkpoint, s3_prefix, tmp_path, scenes, monkeypatch):
    monkeypatch.setattr(locations, "CACHE_DIR", tmp_path / "cache")
    arch, path = checkpoint
    fs, root = storage.filesystem(s3_prefix)
    fs.put_file(str(path), f"{root}/ckpt/RemoteCLIP-tiny.pt")
    source = f"{s3_prefix}/ckpt/RemoteCLIP-tiny.pt"
    record = rsclip.convert_model(source, f"{s3_prefix}/converted", arch=str(arch))
    assert record["source"] == source and record["source_files"][0]["size"] == path.stat().st_size
    assert fs.exists(f"{root}/converted/{RECORD_FILE}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in scenes]
    want = rsclip.load_model(f"open_clip:{arch}:{path}").encode_images(images)
    for model in (f"{s3_prefix}/converted", f"open_clip:{arch}:{source}"):
        np.testing.assert_array_equal(rsclip.load_model(model).encode_images(images), want)

    folder = build_tiny_clip(tmp_path / "hf")  # a Hugging Face export with .bin weights, on S3
    from transformers import CLIPModel

    torch.save(CLIPModel.from_pretrained(folder).state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    fs.put(str(folder) + "/", f"{root}/hf", recursive=True)
    got = rsclip.load_model(f"hf-bin:{s3_prefix}/hf").encode_images(images)
    np.testing.assert_allclose(got, rsclip.load_model(build_tiny_clip(tmp_path / "again")).encode_images(images),
                               atol=1e-6)
