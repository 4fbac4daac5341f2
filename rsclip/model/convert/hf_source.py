"""Hugging Face CLIP exports as conversion sources: fetched from a folder, ``s3://`` prefix or hub id, and read.

A source's weights may be ``pytorch_model.bin`` (read with ``weights_only``) or safetensors, whole or sharded.

Only the files a CLIP export consists of are fetched (an allow-list of names, each size-bounded), so a
prefix or repository holding anything else (Flax, TensorFlow, notebooks, code) costs nothing and runs nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from rsclip.runtime import storage
from rsclip.model.checkpoints import CheckpointFile, fetch_checkpoint, read_checkpoint, state_dict_of
from rsclip.model import hub
from rsclip.model.locations import is_hub_id
from rsclip.errors import InvalidInput, LimitExceeded, NotFound

WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-(\d{5})-of-(\d{5}))?\.(safetensors|bin)$")
SIDE_FILES = frozenset({"config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "vocab.json", "merges.txt"})
MAX_SIDE_FILE_BYTES = 16 * 1024 * 1024  # tokenizer.json of CLIP is 2.2 MB
# transformers < 4.31 saved the position ids of both towers as persistent buffers; they are rebuilt on load
LEGACY_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
_OTHER_WEIGHTS = ("flax_model.msgpack", "tf_model.h5")


def _wanted(name: str) -> bool:
    return name in SIDE_FILES or WEIGHT_FILE.match(name) is not None


def _download_prefix(uri: str, workdir: Path, max_bytes: int) -> Path:
    """The CLIP files directly under an ``s3://`` prefix, copied into ``workdir/hf``."""
    folder = workdir / "hf"
    folder.mkdir()
    with storage.failures(uri):
        fs, root = storage.filesystem(uri)
        try:
            listing = fs.ls(root, detail=True)
        except FileNotFoundError:
            listing = []
        files = {Path(i["name"]).name: i for i in listing if i.get("type", "file") == "file"}
        for name, info in sorted(files.items()):
            if not _wanted(name):
                continue
            limit = max_bytes if WEIGHT_FILE.match(name) else MAX_SIDE_FILE_BYTES
            if int(info.get("size") or 0) > limit:
                raise LimitExceeded(f"{uri}/{name} is {info.get('size')} bytes, more than the limit of {limit}")
            fs.get_file(info["name"], str(folder / name))
    return folder


def _hub_snapshot(repo_id: str) -> Path:
    """The side files and weights of hub model ``repo_id``, cached first (:func:`rsclip.model.hub.snapshot`)."""
    return hub.snapshot(repo_id, [*SIDE_FILES, "model*.safetensors", "pytorch_model*.bin"],
                        required=("config.json", "*model*"))


def fetch_hf_folder(source: str, workdir: Path, max_bytes: int) -> tuple[Path, str]:
    """``(local folder, provenance name)`` of a Hugging Face CLIP at ``source`` (local folder, ``s3://``
    prefix or hub id ``org/name``). Raises ``NotFound`` without ``config.json``."""
    if storage.is_remote(source):
        folder, name = _download_prefix(source, workdir, max_bytes), source
    else:
        path = storage.local_path(source).expanduser()
        if path.is_dir():
            folder, name = path, str(path.resolve())
        elif is_hub_id(source):
            folder = _hub_snapshot(source)
            name = f"{source}@{folder.name}"  # the hub's snapshot folder is named by its commit
        else:
            raise NotFound(f"model folder {source} not found")
    if not (folder / "config.json").is_file():
        raise NotFound(f"no Hugging Face model at {source}: config.json not found")
    return folder, name


def read_hf_config(folder: Path, name: str) -> dict:
    """The ``config.json`` of a CLIP export as a dict; raises ``InvalidInput`` for other model types."""
    path = folder / "config.json"
    if path.stat().st_size > MAX_SIDE_FILE_BYTES:
        raise LimitExceeded(f"{name}/config.json is larger than {MAX_SIDE_FILE_BYTES} bytes")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{name}/config.json is not JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") != "clip":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise InvalidInput(f"{name}: model_type {found!r} is not 'clip' (a CLIPModel export is needed)")
    return config


def weight_files(folder: Path, name: str) -> list[Path]:
    """The weight files of an export, safetensors first: one file or every shard of one kind."""
    present = sorted(p.name for p in folder.iterdir() if WEIGHT_FILE.match(p.name))
    for stem, suffix in (("model", "safetensors"), ("pytorch_model", "bin")):
        if f"{stem}.{suffix}" in present:
            return [folder / f"{stem}.{suffix}"]
        shards = [n for n in present if n.startswith(f"{stem}-") and n.endswith(f".{suffix}")]
        if shards:
            total = int(WEIGHT_FILE.match(shards[0]).group(4))
            if len(shards) != total or any(int(WEIGHT_FILE.match(n).group(4)) != total for n in shards):
                raise InvalidInput(f"{name}: {len(shards)} of {total} {suffix} weight shards present")
            return [folder / n for n in shards]
    others = [n for n in _OTHER_WEIGHTS if (folder / n).exists()]
    hint = (f" (it has {', '.join(others)}: transformers 5 reads neither; save it once with transformers 4 "
            "as PyTorch or safetensors)") if others else ""
    raise InvalidInput(f"{name}: no model.safetensors or pytorch_model.bin weights{hint}")


def read_hf_weights(folder: Path, name: str, max_bytes: int) -> tuple[dict[str, torch.Tensor], list[CheckpointFile]]:
    """All tensors of an export's weight files (legacy position-id buffers dropped) and the files read."""
    state: dict[str, torch.Tensor] = {}
    files = []
    for path in weight_files(folder, name):
        checkpoint = fetch_checkpoint(str(path), folder, max_bytes)
        label = f"{name}/{path.name}"
        loaded, _ = read_checkpoint(checkpoint.path, label, max_bytes)
        part = state_dict_of(loaded, label)
        clash = sorted(set(part) & set(state))
        if clash:
            raise InvalidInput(f"{label}: key {clash[0]!r} is also in another shard")
        state.update(part)
        files.append(checkpoint)
    return {k: v for k, v in state.items() if k not in LEGACY_BUFFERS}, files
