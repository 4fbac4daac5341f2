"""CLIP's byte-level BPE vocabulary (49,408 tokens), the tokenizer of every converted open_clip model.

rsclip does not ship the vocabulary; a conversion takes it from, in this order:

1. the file named by ``RSCLIP_CLIP_BPE``: open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (for hosts with
   neither open_clip nor the Hugging Face hub);
2. an installed open_clip package's copy of that file (found without importing the package);
3. OpenAI's CLIP tokenizer files on the Hugging Face hub (``vocab.json`` and ``merges.txt`` of
   ``openai/clip-vit-base-patch32``, the same vocabulary), from the local cache or downloaded once.

A file must be byte for byte the one OpenAI published with CLIP (its sha256 is checked before it is read); a
hub vocabulary must have CLIP's size, merges and end-of-text id.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from rsclip.errors import InvalidInput, LimitExceeded

BPE_ENV = "RSCLIP_CLIP_BPE"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
MAX_BPE_BYTES = 4 * 1024 * 1024  # the real file is 1.3 MB
HUB_TOKENIZER = "openai/clip-vit-base-patch32"  # OpenAI's CLIP tokenizer: the same vocabulary and merges
# open_clip's tokenizer: 256 byte tokens, their end-of-word forms, 48,894 merges, start and end of text.
BPE_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + BPE_MERGES + 2
SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"
SOT_ID, EOT_ID = VOCAB_SIZE - 2, VOCAB_SIZE - 1


def build_tokenizer(context_length: int):
    """A Hugging Face ``CLIPTokenizer`` equal to open_clip's, cutting at ``context_length`` tokens and padding
    with end of text."""
    from transformers import CLIPTokenizer

    data = bpe_bytes()
    vocab, merges = hub_vocabulary() if data is None else read_bpe(data)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=context_length)


def bpe_bytes() -> bytes | None:
    """The vocabulary file's bytes from ``RSCLIP_CLIP_BPE`` or an installed open_clip, checked; ``None`` when
    neither names one."""
    named = os.environ.get(BPE_ENV, "").strip()
    if named:
        return checked_bpe(Path(named), BPE_ENV)
    bundled = open_clip_bpe()
    return None if bundled is None else checked_bpe(bundled, "the installed open_clip")


def open_clip_bpe() -> Path | None:
    """The vocabulary file inside an installed open_clip package, located without importing it."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / BPE_NAME
        if path.is_file():
            return path
    return None


def checked_bpe(path: Path, source: str) -> bytes:
    """``path``'s bytes when it is CLIP's vocabulary file; an error naming it and ``source`` otherwise."""
    if not path.is_file():
        raise InvalidInput(f"{source} names {path}, which is not a file (want open_clip's {BPE_NAME})")
    size = path.stat().st_size
    if size > MAX_BPE_BYTES:
        raise LimitExceeded(f"{path} (from {source}) is {size} bytes, more than CLIP's vocabulary "
                            f"({MAX_BPE_BYTES} at most)")
    with path.open("rb") as f:
        data = f.read(MAX_BPE_BYTES + 1)
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_SHA256:
        raise InvalidInput(f"{path} (from {source}) is not CLIP's vocabulary {BPE_NAME}: sha256 {digest[:16]}... "
                           f"differs from {BPE_SHA256[:16]}...")
    return data


def read_bpe(data: bytes) -> tuple[dict[str, int], list[str]]:
    """CLIP's BPE as ``(vocab, merges)`` in the order open_clip builds it from the vocabulary file's ``data``:
    the 256 byte characters, the same with ``</w>``, one token per merge, then start and end of text."""
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : 1 + BPE_MERGES]  # line 0 is the file's version header
    # GPT-2's byte alphabet, in its order: the printable bytes as themselves, then the others (whitespace,
    # control) as code points from 256 on
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def hub_vocabulary() -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of OpenAI's CLIP tokenizer (``vocab.json``, ``merges.txt``) from the Hugging Face
    cache or hub, checked to be CLIP's vocabulary."""
    from huggingface_hub import hf_hub_download

    try:
        files = [Path(hf_hub_download(HUB_TOKENIZER, name)) for name in ("vocab.json", "merges.txt")]
    except (OSError, ValueError) as exc:  # not cached and no hub: huggingface_hub's errors are OSErrors
        raise InvalidInput(
            f"converting an open_clip checkpoint needs CLIP's BPE vocabulary and none was found: set {BPE_ENV} to "
            f"open_clip's {BPE_NAME}, install open-clip-torch, or let the Hugging Face hub serve {HUB_TOKENIZER} "
            f"({str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__})") from exc
    for path in files:
        if path.stat().st_size > MAX_BPE_BYTES:
            raise LimitExceeded(f"{path} of {HUB_TOKENIZER} is more than {MAX_BPE_BYTES} bytes")
    try:
        vocab = json.loads(files[0].read_text("utf-8"))
        merges = [m for m in files[1].read_text("utf-8").split("\n")[1:] if m]  # line 0: "#version: 0.2"
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the tokenizer files of {HUB_TOKENIZER} in {files[0].parent} are unreadable: "
                           f"{exc}") from exc
    if (not isinstance(vocab, dict) or len(vocab) != VOCAB_SIZE or len(merges) != BPE_MERGES
            or vocab.get(EOT_TOKEN) != EOT_ID):
        raise InvalidInput(f"the tokenizer of {HUB_TOKENIZER} has {len(vocab)} tokens and {len(merges)} merges, "
                           f"not CLIP's {VOCAB_SIZE} and {BPE_MERGES}")
    return vocab, merges
