"""rsclip.model: loading (local dir, s3://), encoding, and preprocessing parity with CLIPImageProcessor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rsclip.runtime import storage
from rsclip.geo.images import to_hwc_uint8
from rsclip.model.clip import ImagePreprocess, load_model
from rsclip.model.sources import fetch_model_dir
from tests.helpers import GEOTIFF_DIR

PROMPTS = ["an aerial photograph of airport", "an aerial photograph of beach", "an aerial photograph of farmland"]


def _images(files, n):
    return [np.asarray(Image.open(f).convert("RGB")) for f in files[:: max(1, len(files) // n)][:n]]


def test_tiny_export_avoids_legacy_eos_pooling(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["text_config"]["eos_token_id"] != 2
    enc = load_model(tiny_model)
    emb = enc.encode_texts(PROMPTS)
    assert emb.shape == (3, enc.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # prompts sharing a long prefix must still embed differently
    assert np.abs(emb[0] - emb[1]).max() > 1e-3 and np.abs(emb[1] - emb[2]).max() > 1e-3


def test_encode_images_shapes_and_norm(tiny_model, rsicd_files):
    enc = load_model(tiny_model)
    ims = _images(rsicd_files, 5)
    emb = enc.encode_images(ims, batch_size=2)
    assert emb.shape == (5, enc.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # PIL images and arrays give the same embedding; batch composition does not matter
    pil = enc.encode_images([Image.fromarray(a) for a in ims])
    one = np.concatenate([enc.encode_images([a]) for a in ims])
    np.testing.assert_allclose(pil, emb, atol=1e-5)
    np.testing.assert_allclose(one, emb, atol=1e-5)
    assert enc.encode_images([]).shape == (0, enc.dim)


def test_load_round_trip_local_and_s3(tiny_model, rsicd_files, s3_prefix, tmp_path):
    local = load_model(tiny_model)
    fs, root = storage.filesystem(s3_prefix + "/tiny")
    fs.put(str(tiny_model) + "/", root, recursive=True)
    remote = load_model(s3_prefix + "/tiny")
    ims = _images(rsicd_files, 4)
    np.testing.assert_array_equal(local.encode_images(ims), remote.encode_images(ims))
    np.testing.assert_array_equal(local.encode_texts(PROMPTS), remote.encode_texts(PROMPTS))

    # fetched once: a second fetch reuses the cached folder; a changed model is fetched again
    first = fetch_model_dir(s3_prefix + "/tiny", cache_dir=tmp_path)
    marker = first / "marker-of-this-copy"
    marker.write_text("x")
    assert fetch_model_dir(s3_prefix + "/tiny", cache_dir=tmp_path) == first and marker.exists()
    fs.pipe(root + "/config.json", (tiny_model / "config.json").read_bytes() + b"\n")
    assert fetch_model_dir(s3_prefix + "/tiny", cache_dir=tmp_path) != first


def test_loader_refuses_bad_sources(tiny_model, tmp_path, s3_prefix):
    with pytest.raises(ValueError, match="not found"):
        load_model(tmp_path / "missing" / "model")
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)
    # pickle weights only: refused, never unpickled
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot load"):
        load_model(pickled)
    with pytest.raises(ValueError, match="config.json not found"):
        load_model(s3_prefix + "/nothing-here")
    fs, root = storage.filesystem(s3_prefix + "/pickled")
    fs.put(str(pickled) + "/", root, recursive=True)
    with pytest.raises(ValueError, match="safetensors"):
        load_model(s3_prefix + "/pickled")


def test_bad_inputs_to_encoders(tiny_model):
    enc = load_model(tiny_model)
    for bad in ["", "   ", None]:
        with pytest.raises(ValueError, match="non-empty"):
            enc.encode_texts(["fine", bad])
    with pytest.raises(ValueError, match="uint8"):
        enc.encode_images([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="too small"):
        enc.encode_images([np.zeros((1, 1, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"\(H, W"):
        enc.encode_images([np.zeros((8, 8, 5), dtype=np.uint8)])
    assert to_hwc_uint8(np.zeros((4, 5), dtype=np.uint8)).shape == (4, 5, 3)
    assert to_hwc_uint8(np.zeros((4, 5, 4), dtype=np.uint8)).shape == (4, 5, 3)


def test_preprocessing_matches_clip_image_processor(tiny_model, rsicd_files):
    from transformers import CLIPImageProcessorPil

    enc = load_model(tiny_model)
    processor = CLIPImageProcessorPil.from_pretrained(tiny_model)
    assert enc.preprocess_config == ImagePreprocess.from_processor(processor)
    images = _images(rsicd_files, 300)  # 150x150 scenes: upsampled
    # real GeoTIFF pixels at non-square, larger-than-crop sizes: downsampled, and cropped on the long side
    import rasterio

    with rasterio.open(GEOTIFF_DIR / "m_4709963_se_14_1_20200831.tif") as src:
        naip = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    images += [naip, naip[:300, :517], naip[:611, :250], naip[100:101 + 223, :224]]
    reference = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = enc.preprocess(images).cpu()
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= 0.02


def test_device_resize_is_close_to_pillow(rsicd_files):
    """The GPU path resizes in torch; Pillow's pass order is its own, so sharp edges may differ a little."""
    from rsclip.model.clip import _resize_on_device, resize_shortest_side

    cfg = ImagePreprocess()
    import rasterio

    with rasterio.open(GEOTIFF_DIR / "RGB.byte.tif") as src:
        landsat = np.moveaxis(src.read(), 0, -1)
    for image in _images(rsicd_files, 10) + [landsat, landsat[:300, :500], landsat[:700, :260]]:
        image = np.array(image)  # writable, contiguous
        expected = resize_shortest_side(image, cfg).astype(np.float32)
        batch = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        got = _resize_on_device(batch, *expected.shape[:2])[0].permute(1, 2, 0).numpy()
        diff = np.abs(got - expected)
        assert diff.mean() <= 0.25 and np.percentile(diff, 99) <= 2.0
