"""Evaluation of a CLIP model on captioned, labelled scenes, and the training run's metric history.

Two families, as the literature on remote-sensing CLIP reports them (all values are fractions in [0, 1]):

- the seed's (CLIP-RSICD) zero-shot protocol: class name = the label as is (for RSICD the file-name
  prefix), one prompt ``"an aerial photograph of {}"``, softmax over the classes, top-1/3/5/10 accuracy;
  plus ``top1_ensemble`` with the class text embedding averaged over :data:`rsclip.prompts.TEMPLATES`;
- retrieval (RemoteCLIP/GeoRSCLIP): image->text R@1/5/10 (an image is a hit when any of its captions is
  among the k best texts), text->image R@1/5/10 (a caption is a hit when its image is among the k best
  images), and ``mR``, the mean of the six.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from rsclip.runtime import storage
from rsclip.model.prompts import SEED_TEMPLATE, TEMPLATES, class_embeddings
from rsclip.model.vectors import softmax, unit
from rsclip.errors import InvalidInput

TOPK = (1, 3, 5, 10)
RECALL_K = (1, 5, 10)
# The keys of an evaluation, in the order they are printed.
METRIC_KEYS = (
    "top1", "top3", "top5", "top10", "top1_ensemble",
    "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR", "n_images",
)


def topk_accuracy(probs: np.ndarray, targets: np.ndarray, ks: Sequence[int] = TOPK) -> dict[str, float]:
    """``top{k}``: the fraction of rows of ``probs`` ``(N, C)`` whose target class is among the k largest.

    Ties are broken by class order (a stable sort), so a constant score row is not a free hit.
    """
    order = np.argsort(-probs, axis=1, kind="stable")  # (N, C) best class first
    rank = np.argmax(order == np.asarray(targets)[:, None], axis=1)  # (N,) position of the target
    return {f"top{k}": float(np.mean(rank < k)) for k in ks}


def zero_shot(image_emb: np.ndarray, class_emb: np.ndarray, targets: np.ndarray, logit_scale: float = 100.0,
              ks: Sequence[int] = TOPK) -> dict[str, float]:
    """Zero-shot top-k of images ``(N, D)`` against class text embeddings ``(C, D)``; ``targets`` ``(N,)``."""
    logits = logit_scale * unit(image_emb) @ unit(class_emb).T  # (N, C)
    return topk_accuracy(softmax(logits), targets, ks)


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                     ks: Sequence[int] = RECALL_K) -> dict[str, float]:
    """Image->text and text->image recall@k and their mean ``mR``.

    ``image_emb`` ``(N, D)``, ``text_emb`` ``(M, D)``, ``text_image`` ``(M,)`` the image index of each
    text. Ties are broken by index order.
    """
    text_image = np.asarray(text_image)
    sims = unit(image_emb) @ unit(text_emb).T  # (N, M)
    i2t_order = np.argsort(-sims, axis=1, kind="stable")  # (N, M) texts, best first
    hits = text_image[i2t_order] == np.arange(sims.shape[0])[:, None]  # (N, M) is that text one of mine?
    first_hit = np.where(hits.any(axis=1), np.argmax(hits, axis=1), sims.shape[1])  # (N,)
    t2i_order = np.argsort(-sims.T, axis=1, kind="stable")  # (M, N) images, best first
    t2i_rank = np.argmax(t2i_order == text_image[:, None], axis=1)  # (M,)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(np.mean(first_hit < k))
    for k in ks:
        out[f"t2i_r{k}"] = float(np.mean(t2i_rank < k))
    out["mR"] = float(np.mean([out[f"i2t_r{k}"] for k in ks] + [out[f"t2i_r{k}"] for k in ks]))
    return out


def evaluate(encoder, images: Sequence[np.ndarray], captions: Sequence[Sequence[str]],
             labels: Sequence[str], *, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """All metrics of :data:`METRIC_KEYS` for a :class:`rsclip.model.ClipEncoder`-like ``encoder``.

    ``images`` are uint8 HWC arrays, ``captions[i]`` the captions of image i, ``labels[i]`` its class
    (``""`` when unknown: such images count for retrieval only). ``classes`` defaults to the distinct
    labels. Zero-shot keys are ``None`` when no image has a label. Raises :class:`InvalidInput` on no images.
    """
    if not images:
        raise InvalidInput("no images to evaluate")
    if not (len(images) == len(captions) == len(labels)):
        raise InvalidInput("images, captions and labels must have the same length")
    image_emb = encoder.encode_images(list(images))
    texts = [c for caps in captions for c in caps]
    text_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    out.update(retrieval_recall(image_emb, encoder.encode_texts(texts), text_image))
    names = list(classes) if classes is not None else sorted({l for l in labels if l})
    index = {n: i for i, n in enumerate(names)}
    labelled = np.array([i for i, l in enumerate(labels) if l in index], dtype=int)
    if len(labelled):
        targets = np.array([index[labels[i]] for i in labelled])
        seed = zero_shot(image_emb[labelled], class_embeddings(encoder, names, (SEED_TEMPLATE,)), targets)
        out.update(seed)
        ens = zero_shot(image_emb[labelled], class_embeddings(encoder, names, TEMPLATES), targets, ks=(1,))
        out["top1_ensemble"] = ens["top1"]
    out["n_images"] = len(images)
    return out


def format_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table, one row per named evaluation (e.g. base model vs fine-tuned)."""
    head = "| model | " + " | ".join(METRIC_KEYS) + " |"
    rule = "|---|" + "---:|" * len(METRIC_KEYS)
    lines = [head, rule]
    for name, m in rows.items():
        cells = []
        for k in METRIC_KEYS:
            v = m.get(k)
            cells.append("-" if v is None else (str(v) if k == "n_images" else f"{v:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_text(uri: str, text: str | bytes) -> None:
    """Write (replace) a local file or ``s3://`` object atomically (``rsclip.runtime.storage.write_bytes``)."""
    storage.write_bytes(uri, text)


def read_history(uri: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (empty when it does not exist)."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def write_history(uri: str, history: Sequence[dict[str, Any]]) -> None:
    """Write the whole history as JSON lines (object stores cannot append, so it is rewritten)."""
    write_text(uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def plot_history(uri: str, history: Sequence[dict[str, Any]]) -> None:
    """A PNG of training loss, validation zero-shot top-1 and validation mR per epoch."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("train_loss", "val_top1", "val_mR"),
                              ("training loss", "val zero-shot top-1", "val retrieval mR")):
        ys = [r.get(key) for r in history]
        pts = [(e, y) for e, y in zip(epochs, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_text(uri, buf.getvalue())


def evaluate_samples(encoder, samples: Sequence[dict[str, Any]], *, threads: int = 4) -> dict[str, Any]:
    """:func:`evaluate` on :mod:`rsclip.train.data` samples, decoded with the encoder's own preprocessing.

    Unreadable images are skipped and counted under ``skipped_images``. Raises :class:`InvalidInput` when no
    image is readable.
    """
    from rsclip.train.data import CAPTIONS, LABEL
    from rsclip.train.transforms import StageConfig, decode_samples

    stage = StageConfig.from_preprocess(encoder.preprocess_config, image_aug=False, text_aug=False)
    images, skipped = decode_samples(samples, stage, threads=threads)
    gone = set(skipped)
    kept = [s for i, s in enumerate(samples) if i not in gone]
    out = evaluate(encoder, images, [s[CAPTIONS] for s in kept], [s[LABEL] for s in kept],
                   classes=sorted({s[LABEL] for s in samples if s[LABEL]}))
    out["skipped_images"] = len(skipped)
    return out
