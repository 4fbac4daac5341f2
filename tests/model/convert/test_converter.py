"""Converted checkpoints embed as their source does: every architecture family and every checkpoint format,
tiny random models, real scenes and captions from the shared data, compared with an independent reference
forward pass (tests/helpers/openclip_reference.py) on the open_clip state dict; Hugging Face ``.bin`` folders; the
conversion record; the model cache behind ``open_clip:`` / ``hf-bin:`` model names."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rsclip.model import locations, sources
from rsclip.model.clip import load_model
from rsclip.model.convert.converter import CONVERSION_VERSION, RECORD_FILE, convert_model
from rsclip.model.convert.openclip_arch import KNOWN_CONFIGS
from rsclip.errors import InvalidInput
from rsclip.testing import build_tiny_clip
from tests.helpers import openclip_reference as ref
from tests.helpers import RSICD_DIR, require_shared_data, spread_files

MIN_COSINE = 0.9999
# GELU and QuickGELU differ by about 1% of an activation, within the cosine bound on these random models:
# the embeddings are also compared element-wise (float32 round-off is ~1e-7, a wrong activation ~3e-3)
ATOL = 1e-4
# every checkpoint format, each on another family (OpenAI's archive on a QuickGELU one, as OpenAI's are)
FORMAT_CASES = [("ViT-B-32", "plain"), ("ViT-B-16", "training"), ("ViT-L-14-336", "safetensors"),
                ("ViT-H-14", "legacy"), ("ViT-B-32-quickgelu", "torchscript"), ("ViT-bigG-14", "custom-text")]


@pytest.fixture(scope="module")
def scenes() -> list:
    require_shared_data()
    return spread_files(sorted((RSICD_DIR / "RSICD_images").glob("*.jpg")), 8)


@pytest.fixture(scope="module")
def captions(scenes) -> list[str]:
    data = json.loads((RSICD_DIR / "dataset_rsicd.json").read_text())
    by_file = {im["filename"]: im["sentences"][0]["raw"] for im in data["images"]}
    return [by_file[p.name] for p in scenes]


@pytest.fixture(scope="module")
def tokenizer():
    return ref.ReferenceTokenizer(ref.wheel_bpe())


def _reference(sd, cfg, scenes, captions, tokenizer):
    size = ref.sizes(cfg)["image"]
    pixels = torch.stack([ref.preprocess(p, size) for p in scenes])
    images = F.normalize(ref.encode_image(sd, cfg, pixels), dim=-1).numpy()
    texts = F.normalize(ref.encode_text(sd, cfg, tokenizer(captions)), dim=-1).numpy()
    return images, texts


def _embed(model, scenes, captions):
    enc = load_model(model, device="cpu")
    return enc.encode_images([np.asarray(Image.open(p).convert("RGB")) for p in scenes]), enc.encode_texts(captions)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def _assert_same(got: tuple, want: tuple) -> None:
    """Image and text embeddings: cosine >= MIN_COSINE per row, and equal within ATOL."""
    for g, w in zip(got, want):
        assert _min_cosine(g, w) >= MIN_COSINE
        np.testing.assert_allclose(g, w, atol=ATOL)


def _source(tmp_path, family: str, fmt: str, seed: int = 0):
    cfg = ref.tiny_config(family)
    arch = tmp_path / f"{family}.json"
    arch.write_text(json.dumps(cfg))
    sd = ref.random_state_dict(cfg, seed)
    suffix = ".safetensors" if fmt == "safetensors" else ".pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about Python values becoming constants
        path = ref.write_checkpoint(sd, cfg, tmp_path / f"{family}-{fmt}{suffix}", fmt)
    return cfg, arch, ref.stored_weights(sd, fmt), path


@pytest.mark.parametrize("family, fmt", [(name, "plain") for name in sorted(KNOWN_CONFIGS)
                                         if name not in dict(FORMAT_CASES)] + FORMAT_CASES)
def test_converted_model_embeds_as_the_source(family, fmt, tmp_path, scenes, captions, tokenizer):
    cfg, arch, sd, checkpoint = _source(tmp_path, family, fmt)
    record = convert_model(f"open_clip:{arch}:{checkpoint}", tmp_path / "out")
    assert record["format"] == {"torchscript": "torchscript", "safetensors": "safetensors",
                                "legacy": "torch-legacy"}.get(fmt, "torch")
    _assert_same(_embed(tmp_path / "out", scenes, captions), _reference(sd, cfg, scenes, captions, tokenizer))


def test_the_comparison_sees_mistakes(tmp_path, scenes, captions, tokenizer):
    """The comparison above can fail: the other MLP activation (GELU for QuickGELU) exceeds ATOL, and query
    and key rows swapped in every attention fall far below MIN_COSINE."""
    cfg, arch, sd, checkpoint = _source(tmp_path, "ViT-B-32", "plain")
    convert_model(f"open_clip:{arch}:{checkpoint}", tmp_path / "out")
    got = _embed(tmp_path / "out", scenes, captions)
    for g, w in zip(got, _reference(sd, {**cfg, "quick_gelu": True}, scenes, captions, tokenizer)):
        assert np.abs(g - w).max() > 10 * ATOL
    swapped = dict(sd)
    for key in (k for k in sd if k.endswith("attn.in_proj_weight")):
        q, k, v = sd[key].chunk(3)
        swapped[key] = torch.cat([k, q, v])
    for g, w in zip(got, _reference(swapped, cfg, scenes, captions, tokenizer)):
        assert _min_cosine(g, w) < 0.99


def test_full_size_vit_b32_by_name(tmp_path, scenes, captions, tokenizer):
    """The named architecture itself, at its real size (88M parameters), as RemoteCLIP's file would be."""
    cfg = ref.wheel_config("ViT-B-32")
    sd = ref.random_state_dict(cfg, seed=3)
    torch.save(sd, tmp_path / "RemoteCLIP-ViT-B-32.pt")
    convert_model(str(tmp_path / "RemoteCLIP-ViT-B-32.pt"), tmp_path / "out", arch="ViT-B-32")
    _assert_same(_embed(tmp_path / "out", scenes[:2], captions[:3]),
                 _reference(sd, cfg, scenes[:2], captions[:3], tokenizer))


def test_converted_folder_is_a_plain_transformers_export(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    _, arch, _, checkpoint = _source(tmp_path, "ViT-L-14-336", "plain")
    record = convert_model(f"open_clip:{arch}:{checkpoint}", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "preprocessor_config.json", RECORD_FILE, "tokenizer.json",
         "tokenizer_config.json"])
    model = CLIPModel.from_pretrained(out, use_safetensors=True)
    assert model.config.vision_config.image_size == 336 and model.config.text_config.eos_token_id == 49407
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.size["shortest_edge"] == 336 and processor.crop_size["height"] == 336
    assert AutoTokenizer.from_pretrained(out)("airport")["input_ids"] == [49406, 3259, 49407]
    saved = json.loads((out / RECORD_FILE).read_text())
    assert saved == record
    assert saved["conversion_version"] == CONVERSION_VERSION and saved["kind"] == "open_clip"
    assert saved["source"] == str(checkpoint.resolve())
    assert saved["architecture"]["name"] == str(arch) and saved["architecture"]["image_size"] == 336
    assert saved["source_files"] == [{"name": checkpoint.name, "size": checkpoint.stat().st_size,
                                      "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}]


def _bin_folder(src, dest, shards: int = 1):
    """A Hugging Face CLIP folder whose weights are ``pytorch_model.bin`` (as the seed's 2021 model), with the
    position-id buffers transformers < 4.31 saved."""
    from transformers import CLIPModel

    dest.mkdir()
    for p in src.iterdir():
        if p.suffix != ".safetensors":
            shutil.copy(p, dest / p.name)
    state = CLIPModel.from_pretrained(src).state_dict()
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    keys = sorted(state)
    for i in range(shards):
        part = {k: state[k] for k in keys[i::shards]}
        name = "pytorch_model.bin" if shards == 1 else f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save(part, dest / name)
    return dest


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_bin_folder_converts_to_identical_outputs(tmp_path, scenes, captions, shards):
    source = build_tiny_clip(tmp_path / "tiny")
    folder = _bin_folder(source, tmp_path / "bin", shards)
    with pytest.raises(InvalidInput, match="safetensors"):
        load_model(folder)  # as it is: refused, pointing at the conversion
    record = convert_model(f"hf-bin:{folder}", tmp_path / "out")
    want = _embed(source, scenes, captions)
    for got in (_embed(tmp_path / "out", scenes, captions), _embed(f"hf-bin:{folder}", scenes, captions)):
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert record["kind"] == "hf" and len(record["source_files"]) == shards
    for entry in record["source_files"]:
        assert entry["sha256"] == hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest()


def test_hf_folder_without_pytorch_weights(tmp_path):
    folder = _bin_folder(build_tiny_clip(tmp_path / "tiny"), tmp_path / "flax")
    (folder / "pytorch_model.bin").rename(folder / "flax_model.msgpack")
    with pytest.raises(InvalidInput, match="flax_model.msgpack"):
        convert_model(str(folder), tmp_path / "out")


def test_model_names_convert_once_into_the_cache(tmp_path, monkeypatch, scenes, captions):
    monkeypatch.setattr(locations, "CACHE_DIR", tmp_path / "cache")
    cfg, arch, _, checkpoint = _source(tmp_path, "ViT-B-32", "training")
    spec = f"open_clip:{arch}:{checkpoint}"
    first = _embed(spec, scenes, captions)
    converted = list((tmp_path / "cache" / "converted").iterdir())
    assert len([p for p in converted if not p.name.startswith(".")]) == 1
    marker = [p for p in converted if not p.name.startswith(".")][0] / "marker"
    marker.touch()
    np.testing.assert_array_equal(_embed(spec, scenes, captions)[0], first[0])
    assert marker.exists()  # reused, not converted again
    assert sources.resolve_model_source(spec) == str(marker.parent)

    ref.write_checkpoint(ref.random_state_dict(cfg, seed=9), cfg, checkpoint, "training")  # replaced in place
    again = _embed(spec, scenes, captions)
    assert sources.resolve_model_source(spec) != str(marker.parent)
    assert np.abs(again[0] - first[0]).max() > 1e-3
