"""Where the tokenizer of converted open_clip models comes from (rsclip.model.clip_bpe): the file named by
RSCLIP_CLIP_BPE, an installed open_clip's copy (found without importing the package), or OpenAI's tokenizer
from the Hugging Face cache; a file or tokenizer that is not CLIP's vocabulary is refused by name."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest

from rsclip.model.clip_bpe import (BPE_ENV, BPE_NAME, EOT_ID, EOT_TOKEN, HUB_TOKENIZER, MAX_BPE_BYTES, VOCAB_SIZE,
                                  build_tokenizer, open_clip_bpe, read_bpe)
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.testing import build_tokenizer as build_char_tokenizer
from tests.helpers import ROOT

PRINT_TOKENS = ("from rsclip.model.clip_bpe import build_tokenizer\n"
                "t = build_tokenizer(77)\n"
                "print(len(t), t('two planes near a terminal')['input_ids'])\n")


def assert_clip(tokenizer) -> None:
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.convert_tokens_to_ids(EOT_TOKEN) == EOT_ID
    assert tokenizer.model_max_length == 77


def test_the_named_file_is_used_and_anything_else_is_refused_by_name(clip_bpe, tmp_path, monkeypatch):
    assert os.environ[BPE_ENV] == str(clip_bpe)
    assert_clip(build_tokenizer(77))

    other = tmp_path / BPE_NAME
    other.write_bytes(gzip.compress(b"#version: 0.2\nt h\n"))
    fifo = tmp_path / "fifo.gz"
    os.mkfifo(fifo)
    big = tmp_path / "big.gz"
    big.write_bytes(b"\0" * (MAX_BPE_BYTES + 1))
    for path, error, message in ((other, InvalidInput, "is not CLIP's vocabulary"),
                                 (tmp_path, InvalidInput, "not a file"), (fifo, InvalidInput, "not a file"),
                                 (tmp_path / "missing.gz", InvalidInput, "not a file"),
                                 (big, LimitExceeded, "more than CLIP's vocabulary")):
        monkeypatch.setenv(BPE_ENV, str(path))
        with pytest.raises(error, match=message) as info:
            build_tokenizer(77)
        assert str(path) in str(info.value) and BPE_ENV in str(info.value)


def test_an_installed_open_clip_is_read_not_imported(clip_bpe, tmp_path, monkeypatch):
    monkeypatch.delenv(BPE_ENV)
    package = tmp_path / "site" / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('open_clip was imported')\n")
    shutil.copyfile(clip_bpe, package / BPE_NAME)
    monkeypatch.syspath_prepend(tmp_path / "site")

    assert open_clip_bpe() == package / BPE_NAME
    assert_clip(build_tokenizer(77))
    assert "open_clip" not in sys.modules

    (package / BPE_NAME).write_bytes(clip_bpe.read_bytes()[:-1])  # one byte short: not the published file
    with pytest.raises(InvalidInput, match="installed open_clip"):
        build_tokenizer(77)


def hub_cache(home, vocab: dict[str, int], merges: list[str]) -> None:
    """A tokenizer's ``vocab.json`` and ``merges.txt`` where the hub cache under ``home`` keeps OpenAI's
    (refs/main names the snapshot)."""
    repo = home / "hub" / f"models--{HUB_TOKENIZER.replace('/', '--')}"
    commit = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "vocab.json").write_text(json.dumps(vocab))
    (snapshot / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def without_a_file(home) -> subprocess.CompletedProcess:
    """``PRINT_TOKENS`` run with no RSCLIP_CLIP_BPE, no network and the Hugging Face cache at ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in (BPE_ENV, "HF_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", PRINT_TOKENS], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_without_a_file_openais_tokenizer_comes_from_the_hub_cache(clip_bpe, tmp_path):
    hub_cache(tmp_path / "hf", *read_bpe(clip_bpe.read_bytes()))
    done = without_a_file(tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-3000:]
    want = build_tokenizer(77)("two planes near a terminal")["input_ids"]
    assert done.stdout.strip() == f"{VOCAB_SIZE} {want}"

    hub_cache(tmp_path / "other", build_char_tokenizer().get_vocab(), [])  # a cached tokenizer, not CLIP's
    done = without_a_file(tmp_path / "other")
    assert done.returncode != 0 and f"not CLIP's {VOCAB_SIZE}" in done.stderr

    hub_cache(tmp_path / "broken", {}, [])
    next((tmp_path / "broken").rglob("vocab.json")).write_bytes(b"{not json")
    done = without_a_file(tmp_path / "broken")
    assert done.returncode != 0 and "are unreadable" in done.stderr.strip().splitlines()[-1]


def test_with_no_vocabulary_anywhere_the_error_says_where_to_get_one(tmp_path):
    done = without_a_file(tmp_path / "empty")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rsclip.errors.InvalidInput: converting an open_clip checkpoint needs CLIP's BPE")
    for way in (BPE_ENV, "open-clip-torch", HUB_TOKENIZER):
        assert way in last
