"""Offline CLIP exports for tests and benchmarks: built from a ``CLIPConfig``, written with ``save_pretrained``.

Nothing here downloads anything. The tokenizer is a byte-level CLIP BPE with no merges (one token per
character), built in memory. Its end-of-text id is not 2: transformers' CLIP text tower treats
``eos_token_id == 2`` as a legacy config and pools at the position of the highest token id, which would make
every prompt sharing a prefix embed identically.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TINY_EMBED_DIM = 32


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (the byte-level pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_vocab() -> dict[str, int]:
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tokenizer():
    """A character-level ``CLIPTokenizer`` (514 tokens) that needs no files."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[])


def _export(path: str | os.PathLike, config, seed: int, image_size: int | None = None) -> Path:
    """Save a random CLIP of ``config`` with the tokenizer and an image processor (for ``image_size`` px input
    when given, else the CLIP default of 224)."""
    from transformers import CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer().save_pretrained(out)
    sizes = {} if image_size is None else {"size": {"shortest_edge": image_size},
                                           "crop_size": {"height": image_size, "width": image_size}}
    CLIPImageProcessorPil(**sizes).save_pretrained(out)
    return out


def _text_config(tokenizer, **sizes) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=77,
        **sizes,
    )


def _clip_config(text: dict, vision: dict, projection_dim: int):
    """A ``CLIPConfig`` with the character tokenizer's text settings and 224 px, 32 px-patch vision input."""
    from transformers import CLIPConfig

    return CLIPConfig(text_config=_text_config(build_tokenizer(), **text),
                      vision_config=dict(image_size=224, patch_size=32, **vision), projection_dim=projection_dim)


def build_tiny_clip(path: str | os.PathLike, *, seed: int = 0, embed_dim: int = TINY_EMBED_DIM) -> Path:
    """Write a randomly initialised tiny CLIP (2 layers, width 32, 224 px input) to ``path``."""
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return _export(path, _clip_config(sizes, sizes, embed_dim), seed)


def build_small_clip(path: str | os.PathLike, *, seed: int = 0, size: int = 64) -> Path:
    """Write a randomly initialised small CLIP (``size`` px input, 8 px patches, width 64, 2 layers): cheap enough
    to train from scratch on the shared scenes on 2 CPUs."""
    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    from transformers import CLIPConfig

    config = CLIPConfig(text_config=_text_config(build_tokenizer(), **sizes),
                        vision_config=dict(image_size=size, patch_size=8, **sizes), projection_dim=64)
    return _export(path, config, seed, image_size=size)


def build_vit_b32(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a randomly initialised CLIP ViT-B/32 (the default model's architecture and compute cost)."""
    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    return _export(path, _clip_config(text, vision, 512), seed)
