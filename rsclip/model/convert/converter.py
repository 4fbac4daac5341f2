"""Converting CLIP checkpoints into ``save_pretrained`` folders: the conversion specs, one conversion, its cache.

Two kinds of source that are not safetensors exports, written as a model wherever rsclip takes one
(``--model``, ``rsclip.load_model``):

- ``open_clip:ARCH:URI`` — an open_clip or OpenAI checkpoint file (``.pt``/``.bin``/``.safetensors``: a
  state dict, a training checkpoint ``{"state_dict": ...}``, ``module.`` prefixes, or OpenAI's TorchScript
  archive) of the open_clip architecture ``ARCH`` (``ViT-B-32``, ``ViT-L-14-336-quickgelu``, a config .json);
- ``hf-bin:SRC`` — a Hugging Face CLIP folder, ``s3://`` prefix or hub id whose weights are
  ``pytorch_model.bin`` (or safetensors).

:func:`convert_model` writes a folder that plain transformers loads: ``model.safetensors``, ``config.json``,
the tokenizer, the image processor and :data:`RECORD_FILE` (source, sha256 of each source file,
architecture, conversion version). :func:`converted_model_dir` does it once per source into the model cache;
:func:`rsclip.model.sources.resolve_model_source` calls it, so every entry point accepts these sources.
Pickles are read with ``weights_only`` only (:mod:`rsclip.model.checkpoints`).

Every process that opens a tile table imports this module (through :mod:`rsclip.model.sources`), decode
workers included, so the modules that bring torch (checkpoints, weights, Hugging Face sources) are imported
by the functions that convert, when a conversion runs.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rsclip.model import locations, versions
from rsclip.runtime import storage
from rsclip.model.clip_bpe import build_tokenizer
from rsclip.model.convert.openclip_arch import build_image_processor, resolve_architecture
from rsclip.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from rsclip.model.checkpoints import CheckpointFile

# open_clip training checkpoints carry the optimiser state too (about 3x the weights): ViT-bigG-14 is ~31 GB.
MAX_CHECKPOINT_BYTES = 40 * 1024**3
OPEN_CLIP_PREFIX = "open_clip:"
HF_BIN_PREFIX = "hf-bin:"
RECORD_FILE = "rsclip_conversion.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")  # a file, not a Hugging Face folder
WEIGHTS_FILE = "model.safetensors"
# Bump when converted folders change (names, dtypes, tokenizer): cached conversions are then redone.
CONVERSION_VERSION = 1


@dataclass(frozen=True)
class ConversionSource:
    """What to convert: ``kind`` (``open_clip`` or ``hf``), the ``uri`` and, for open_clip, the ``arch``."""

    kind: str
    uri: str
    arch: str | None = None


def is_conversion_spec(text: str) -> bool:
    """True for model names that ask for a conversion (``open_clip:ARCH:URI``, ``hf-bin:SRC``)."""
    return str(text).startswith((OPEN_CLIP_PREFIX, HF_BIN_PREFIX))


def parse_source(source: str, arch: str | None = None) -> ConversionSource:
    """The :class:`ConversionSource` a user wrote: a spec (``open_clip:ARCH:URI``, ``hf-bin:SRC``), a
    checkpoint file with ``arch``, or a Hugging Face folder, prefix or hub id. Raises ``InvalidInput``."""
    text = str(source)
    if text.startswith(OPEN_CLIP_PREFIX):
        spec_arch, sep, uri = text[len(OPEN_CLIP_PREFIX):].partition(":")
        if not (spec_arch and sep and uri):
            raise InvalidInput(f"{text!r}: write an open_clip checkpoint as open_clip:ARCH:URI, "
                               "e.g. open_clip:ViT-B-32:s3://models/RemoteCLIP-ViT-B-32.pt")
        if arch and arch != spec_arch:
            raise InvalidInput(f"{text!r} names architecture {spec_arch}, but {arch} was given")
        return ConversionSource("open_clip", uri, spec_arch)
    if text.startswith(HF_BIN_PREFIX):
        if arch:
            raise InvalidInput(f"{text!r} is a Hugging Face model: its config.json gives the architecture")
        if not text[len(HF_BIN_PREFIX):]:
            raise InvalidInput("hf-bin: needs a folder, s3:// prefix or hub id after the colon")
        return ConversionSource("hf", text[len(HF_BIN_PREFIX):])
    if arch:
        return ConversionSource("open_clip", text, arch)
    if text.endswith(CHECKPOINT_SUFFIXES) or storage.local_path(text).expanduser().is_file():
        raise InvalidInput(f"{text} is a checkpoint file: give its open_clip architecture (--arch ViT-B-32, "
                           f"ViT-L-14-quickgelu, ... or open_clip:ARCH:{text})")
    return ConversionSource("hf", text)


def canonical_spec(spec: str) -> str:
    """``spec`` with local paths made absolute: the same source written the same way on every host."""
    src = parse_source(spec)
    if src.kind == "hf":
        return HF_BIN_PREFIX + locations.absolute_location(src.uri)
    arch = locations.absolute_location(src.arch) if src.arch.endswith(".json") else src.arch
    return f"{OPEN_CLIP_PREFIX}{arch}:{locations.absolute_location(src.uri)}"


def _file_record(checkpoint: CheckpointFile, name: str) -> dict:
    return {"name": name, "size": checkpoint.size, "sha256": checkpoint.sha256}


def _record(kind: str, source: str, fmt: str, architecture, files: list[dict]) -> dict:
    from importlib import metadata

    import transformers

    try:
        version = metadata.version("rsclip")
    except metadata.PackageNotFoundError:
        version = "unknown"
    record = {"conversion_version": CONVERSION_VERSION, "kind": kind, "source": source, "format": fmt,
              "architecture": architecture, "source_files": files, "rsclip_version": version,
              "transformers_version": transformers.__version__,
              "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return json.loads(json.dumps(record))  # as it reads back from the file (lists, not tuples)


def _write_folder(folder: Path, config, state: dict, tokenizer, processor, record: dict) -> None:
    """The ``save_pretrained`` layout; ``config.json`` last, as a reader takes it to mean complete."""
    from safetensors.torch import save_file

    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    config.save_pretrained(folder)


def _meta_shapes(config) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``CLIPModel(config)``, without allocating its weights."""
    import torch
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _convert_open_clip(src: ConversionSource, folder: Path, work: Path, max_bytes: int) -> dict:
    from transformers import CLIPConfig

    from rsclip.model.checkpoints import check_keys, fetch_checkpoint, read_checkpoint, state_dict_of
    from rsclip.model.convert.openclip_weights import check_state_dict, normalise_keys, to_hf_state_dict

    arch = resolve_architecture(src.arch)
    checkpoint = fetch_checkpoint(src.uri, work, max_bytes)
    name = src.uri
    loaded, fmt = read_checkpoint(checkpoint.path, name, max_bytes)
    state = normalise_keys(state_dict_of(loaded, name), name)
    del loaded
    check_state_dict(state, arch, name)
    hf_state = to_hf_state_dict(state)
    del state
    config = CLIPConfig(**arch.hf_config())
    # the mapping is ours: a mismatch here is a bug in it, not in the user's file
    check_keys(hf_state, _meta_shapes(config), "converted state dict", "transformers' CLIPModel")
    record = _record("open_clip", locations.absolute_location(src.uri), fmt, arch.to_dict(),
                     [_file_record(checkpoint, Path(src.uri).name)])
    _write_folder(folder, config, hf_state, build_tokenizer(arch.context_length), build_image_processor(arch), record)
    return record


def _convert_hf(src: ConversionSource, folder: Path, work: Path, max_bytes: int) -> dict:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPConfig

    from rsclip.model.checkpoints import check_keys
    from rsclip.model.convert import hf_source
    from rsclip.model.convert.openclip_weights import owned_float32

    source, name = hf_source.fetch_hf_folder(src.uri, work, max_bytes)
    hf_source.read_hf_config(source, name)
    config = CLIPConfig.from_pretrained(source)
    state, files = hf_source.read_hf_weights(source, name, max_bytes)
    check_keys(state, _meta_shapes(config), name, "transformers' CLIPModel for its config.json")
    state = {k: owned_float32(v.reshape(()) if k == "logit_scale" else v) for k, v in state.items()}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot load its tokenizer or image processor: {exc}") from None
    record = _record("hf", name, "transformers", "CLIPModel (config.json)",
                     [_file_record(f, f.path.name) for f in files])
    _write_folder(folder, config, state, tokenizer, processor, record)
    return record


def _check_destination(destination: str) -> None:
    fs, root = storage.filesystem(destination)
    if storage.is_remote(destination):
        with storage.failures(destination):
            taken = fs.exists(root)
    else:
        path = Path(root)
        taken = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if taken:
        raise InvalidInput(f"{destination} already exists: convert into a new folder or prefix")


def _upload(folder: Path, destination: str) -> None:
    """Copy the finished folder to an ``s3://`` destination, ``config.json`` last (a reader takes it to mean
    complete)."""
    with storage.failures(destination):
        fs, root = storage.filesystem(destination)
        for path in sorted(folder.iterdir(), key=lambda p: (p.name == "config.json", p.name)):
            fs.put_file(str(path), f"{root}/{path.name}")


def convert_model(source: str, destination: str | os.PathLike, *, arch: str | None = None,
                  max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict:
    """Convert ``source`` into a ``save_pretrained`` folder at ``destination`` (local or ``s3://``, new).

    ``source`` is an ``open_clip:ARCH:URI`` or ``hf-bin:SRC`` spec, a checkpoint file with ``arch`` (an
    open_clip architecture name or config .json), or a Hugging Face CLIP folder, prefix or hub id. Returns
    the conversion record written beside the weights. Raises ``InvalidInput`` (bad or mismatched checkpoint,
    unsupported architecture, existing destination), ``UnsafeInput`` (a pickle that is not just tensors),
    ``NotFound`` and ``LimitExceeded`` (over ``max_bytes``).
    """
    src = parse_source(source, arch)
    destination = str(destination)
    _check_destination(destination)
    remote = storage.is_remote(destination)
    # scratch space (downloads; for s3:// also the folder uploaded): beside a local destination, else in the cache
    parent = Path(locations.CACHE_DIR) if remote else storage.local_path(destination).expanduser().resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    convert = _convert_open_clip if src.kind == "open_clip" else _convert_hf
    with tempfile.TemporaryDirectory(dir=parent, prefix=".rsclip-convert-", ignore_cleanup_errors=True) as scratch:
        work = Path(scratch)
        target = work / "model" if remote else storage.local_path(destination).expanduser()
        with versions.staged_folder(target, prefix=".rsclip-convert-") as folder:
            record = convert(src, folder, work, max_bytes)
        if remote:
            _upload(target, destination)
    return record


def _source_identity(src: ConversionSource) -> list:
    """What changes when the source's bytes change (path, size, mtime / ETag), without reading them."""
    if src.kind == "hf" and not storage.is_remote(src.uri) and not storage.local_path(src.uri).exists():
        return [src.uri]  # a hub id, by name: converted at the revision of its first use
    with storage.failures(src.uri):
        fs, path = storage.filesystem(src.uri)
        try:
            infos = fs.find(path, detail=True, maxdepth=1) if fs.isdir(path) else {path: fs.info(path)}
        except FileNotFoundError:
            infos = {}
    if not infos:
        raise NotFound(f"model source {src.uri} not found")
    return [src.uri, sorted((p, i.get("size"), i.get("ETag") or i.get("mtime") or i.get("LastModified"))
                            for p, i in infos.items())]


def _arch_identity(arch: str | None) -> str | None:
    if arch and arch.endswith(".json") and Path(arch).expanduser().is_file():
        return hashlib.sha256(Path(arch).expanduser().read_bytes()).hexdigest()
    return arch


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock file: processes on one host converting the same source wait for the first."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def converted_model_dir(spec: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached conversion of ``spec`` (``open_clip:ARCH:URI`` or ``hf-bin:SRC``), converting it the first
    time. The cache key covers the source's identity (path or URI, size, mtime or ETag), the architecture
    and :data:`CONVERSION_VERSION`, so a changed source is converted again. Raises as :func:`convert_model`."""
    src = parse_source(spec)
    identity = [CONVERSION_VERSION, src.kind, _arch_identity(src.arch), _source_identity(src)]
    key = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:24]
    root = Path(cache_dir or locations.CACHE_DIR) / "converted"
    target = root / key
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):
        if not (target / "config.json").is_file():
            convert_model(spec, target)
    return target
