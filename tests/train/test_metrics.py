"""rsclip.train.metrics: zero-shot top-k and retrieval recall on hand-made cases, and evaluate() on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from rsclip.model.clip import load_model
from rsclip.model.prompts import SEED_TEMPLATE, TEMPLATES, prompts_for
from rsclip.train import metrics
from rsclip.train.data import read_samples
from rsclip.train.transforms import StageConfig, decode_samples
from tests.helpers import RSICD_DIR


def test_topk_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]])
    targets = np.array([0, 2, 2, 1])  # ranks of the targets: 0, 2, 1, 1 (a tie is not a free hit)
    assert metrics.topk_accuracy(probs, targets, ks=(1, 2, 3)) == {"top1": 0.25, "top2": 0.75, "top3": 1.0}


def test_retrieval_by_hand():
    images = np.eye(3)
    texts = np.array([[1, 0, 0], [0, 1, 0.1], [0.9, 0.1, 0], [0, 0.2, 1], [0, 0, 1]])
    text_image = np.array([0, 0, 1, 1, 2])
    # image->text: image 0's best text is its own, image 1's own texts rank 2nd and 3rd, image 2's is 1st;
    # text->image: text ranks of their images are 0, 2, 1, 1, 0
    got = metrics.retrieval_recall(images, texts, text_image)
    want = {"i2t_r1": 2 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0, "t2i_r1": 0.4, "t2i_r5": 1.0, "t2i_r10": 1.0}
    want["mR"] = sum(want.values()) / 6
    assert got == pytest.approx(want)
    # recall@1 of text->image against an explicit loop
    sims = images @ (texts / np.linalg.norm(texts, axis=1, keepdims=True)).T
    assert np.mean([np.argmax(sims[:, j]) == text_image[j] for j in range(5)]) == pytest.approx(got["t2i_r1"])


def test_zero_shot_uses_softmax_ranking():
    classes = np.eye(3)
    images = np.array([[1, 0.2, 0], [0.1, 0.3, 1], [0, 1, 0.9]])
    got = metrics.zero_shot(images, classes, np.array([0, 1, 2]), ks=(1, 2))
    assert got == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(1.0)}


def test_evaluate_matches_direct_computation(tiny_model):
    samples = read_samples([str(RSICD_DIR)], split="val")
    samples = [s for s in samples if s["label"] in ("airport", "beach", "forest")][::3][:10]
    enc = load_model(tiny_model)
    images, skipped = decode_samples(samples, StageConfig.from_preprocess(enc.preprocess_config, image_aug=False))
    assert not skipped
    captions = [s["captions"] for s in samples]
    labels = [s["label"] for s in samples]
    got = metrics.evaluate(enc, images, captions, labels)

    names = sorted(set(labels))
    img = enc.encode_images(images).astype(np.float64)
    seed_cls = enc.encode_texts([SEED_TEMPLATE.format(n) for n in names]).astype(np.float64)
    ens = np.stack([enc.encode_texts(prompts_for(n, TEMPLATES)).mean(0) for n in names])
    ens /= np.linalg.norm(ens, axis=1, keepdims=True)
    target = np.array([names.index(l) for l in labels])
    for k in (1, 3, 5, 10):
        hits = [target[i] in np.argsort(-(img[i] @ seed_cls.T), kind="stable")[:k] for i in range(len(images))]
        assert got[f"top{k}"] == pytest.approx(np.mean(hits))
    assert got["top1_ensemble"] == pytest.approx(np.mean(np.argmax(img @ ens.T, axis=1) == target))
    txt = enc.encode_texts([c for caps in captions for c in caps]).astype(np.float64)
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    for k in (1, 5, 10):
        i2t = [any(owner[j] == i for j in np.argsort(-(img[i] @ txt.T), kind="stable")[:k]) for i in range(len(img))]
        t2i = [owner[j] in np.argsort(-(txt[j] @ img.T), kind="stable")[:k] for j in range(len(txt))]
        assert got[f"i2t_r{k}"] == pytest.approx(np.mean(i2t))
        assert got[f"t2i_r{k}"] == pytest.approx(np.mean(t2i))
    assert got["n_images"] == 10 and set(got) == set(metrics.METRIC_KEYS)
    table = metrics.format_markdown({"tiny": got})
    assert table.splitlines()[0].startswith("| model | top1 |") and "| tiny |" in table


def test_history_and_plot_round_trip(tmp_path):
    history = [{"epoch": e, "train_loss": 3.0 - e, "val_top1": 0.1 * e, "val_mR": 0.05 * e} for e in range(1, 4)]
    metrics.write_history(str(tmp_path / "m.jsonl"), history)
    assert metrics.read_history(str(tmp_path / "m.jsonl")) == history
    metrics.plot_history(str(tmp_path / "p.png"), history)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
