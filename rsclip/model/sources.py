"""The model sources rsclip reads: hub ids, ``save_pretrained`` folders, ``s3://`` prefixes and conversion specs.

The one factory that knows every kind of source (as open_clip's ``factory.py``): :func:`resolve_model_source`
turns what a user wrote into something ``from_pretrained`` opens (an ``s3://`` model is copied once into the
local cache, an ``open_clip:ARCH:URI`` or ``hf-bin:SRC`` spec converted once by :mod:`rsclip.model.convert`);
:func:`model_identity` names the weights behind a source (an absolute location and the sha256 of its
safetensors), which a tile table records so that a query encoding with other weights is refused. Callers
outside :mod:`rsclip.model` convert checkpoints with :func:`convert_model` from here (the conversion package
is imported only from the model room).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rsclip.model import hub, locations, versions
from rsclip.model.convert import converter
from rsclip.model.convert.converter import convert_model
from rsclip.runtime import storage
from rsclip.errors import InvalidInput, NotFound, UnsafeInput

__all__ = ["DEFAULT_MODEL", "MAX_MODEL_FILES", "MODEL_FILE_SUFFIXES", "WEIGHT_SUFFIX", "ModelIdentity", "convert_model",
           "fetch_model_dir", "model_identity", "model_reference", "resolve_model_source"]

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
# Files a save_pretrained CLIP directory needs; weights only as safetensors (no pickle is ever loaded).
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model")
WEIGHT_SUFFIX = ".safetensors"
# Files of a model fetched from S3: more or larger than this is not a CLIP export.
MAX_MODEL_FILES = 64


def _relative_key(root: str, path: str) -> str:
    """The name of ``path`` below ``root``; raises :class:`UnsafeInput` for keys that would leave the folder."""
    rel = path[len(root):].lstrip("/")
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or any(p in ("..", ".", "") for p in parts) or "\\" in rel:
        raise UnsafeInput(f"model file {path!r} has an unsafe name (it would be written outside the model folder)")
    return rel


def _staged_path(staging: Path, rel: str) -> Path:
    dest = (staging / rel).resolve()
    if staging.resolve() not in dest.parents:
        raise UnsafeInput(f"model file {rel!r} resolves outside the model folder")
    return dest


def _model_listing(uri: str) -> tuple:
    """``(fs, root, {path: info})`` of the model files under an ``s3://`` prefix (checked, not fetched); a
    prefix with a version pointer gives the files of its current version (:mod:`rsclip.model.versions`)."""
    with storage.failures(uri):  # an unreachable store is one line, not a botocore traceback
        fs, root = storage.filesystem(versions.current_prefix(uri))
        try:
            listing = fs.find(root, detail=True)
        except FileNotFoundError:
            listing = {}
    files = {path: info for path, info in listing.items() if info.get("type", "file") == "file"
             and path.endswith(MODEL_FILE_SUFFIXES) and not versions.unpublished(root, path)}
    names = {_relative_key(root, p) for p in files}
    if "config.json" not in names:
        raise NotFound(f"no CLIP model at {uri}: config.json not found")
    if not any(n.endswith(WEIGHT_SUFFIX) for n in names):
        raise InvalidInput(f"no safetensors weights at {uri} (only safetensors are loaded; "
                           "convert other checkpoints with `rsclip convert-model`)")
    if len(files) > MAX_MODEL_FILES:
        raise InvalidInput(f"{uri} holds {len(files)} model files: not a CLIP export")
    return fs, root, files


def fetch_model_dir(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Copy the model files under an ``s3://`` prefix into the local cache, once, and return the folder.

    The cache key covers the URI and the listing (names, sizes, ETags), so a model overwritten in place is
    fetched again. Files land in a temporary folder that is renamed into place when complete, so a cache
    folder is never partial. Raises ``NotFound``/``InvalidInput`` when the prefix holds no ``config.json``
    or no safetensors, and ``UnsafeInput`` for object keys that would be written outside the folder.
    """
    fs, root, files = _model_listing(uri)
    key = hashlib.sha256(uri.encode())
    for path in sorted(files):
        info = files[path]
        key.update(f"{path}|{info.get('size')}|{info.get('ETag') or info.get('etag')}".encode())
    target = Path(cache_dir or locations.CACHE_DIR) / key.hexdigest()[:24]
    if target.is_dir():
        return target
    # another process fetching the same model may rename its folder into place first: the same files
    with versions.staged_folder(target, prefix=".fetch-", keep_existing=True) as staging:
        for path in files:
            dest = _staged_path(staging, _relative_key(root, path))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(dest))
    return target


@functools.lru_cache(maxsize=16)  # even the cache's snapshot is a few file reads: once per process
def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of hub model ``repo_id``: what a CLIP export needs, the tokenizer included."""
    return hub.snapshot(repo_id, [f"*{suffix}" for suffix in MODEL_FILE_SUFFIXES],
                        required=("config.json", "preprocessor_config.json", "tokenizer_config.json",
                                  f"*{WEIGHT_SUFFIX}"))


def resolve_model_source(source: str | os.PathLike) -> str:
    """The local folder ``from_pretrained`` opens for ``source``: a folder as it is, an ``s3://`` model fetched
    into the cache, a hub id's snapshot (the Hugging Face cache's, else downloaded: :mod:`rsclip.model.hub`).

    Raises ``NotFound`` for a missing folder and ``InvalidInput`` for a folder that is not a CLIP export.
    ``open_clip:ARCH:URI`` and ``hf-bin:SRC`` are converted once into the cache
    (:mod:`rsclip.model.convert.converter`) and resolve to the converted folder.
    """
    text = str(source)
    if converter.is_conversion_spec(text):
        return str(converter.converted_model_dir(text))
    if storage.is_remote(text):
        return str(fetch_model_dir(text))
    path = storage.local_path(text)
    if path.exists():
        if not (path / "config.json").is_file():
            raise InvalidInput(f"{text} is not a save_pretrained CLIP directory (no config.json)")
        if not any(path.glob(f"*{WEIGHT_SUFFIX}")) and any(path.glob("pytorch_model*.bin")):
            raise InvalidInput(f"cannot load {text} as it is: its weights are pytorch_model.bin, and only "
                               f"safetensors load directly; name it hf-bin:{text} or run `rsclip convert-model`")
        return str(path)
    if not locations.is_hub_id(text):
        raise NotFound(f"model directory not found: {text}")
    return str(_hub_snapshot(text))  # a hub id such as openai/clip-vit-base-patch32: its snapshot folder


def model_reference(source: str | os.PathLike) -> str:
    """A model source as a job records it and sends it to its workers: a local folder absolute, whatever the
    working directory that reads it (``models/tiny`` would be a hub id there); a conversion spec canonical;
    hub ids, ``s3://`` prefixes and names of nothing as written (loading them says what is wrong).

    A folder reached through a symbolic link keeps the link's name: ``OUTPUT/model`` of a training run is a
    link to its current version (:mod:`rsclip.model.versions`), which a later export replaces.
    """
    text = str(source)
    if converter.is_conversion_spec(text):
        return converter.canonical_spec(text)
    if storage.is_remote(text):
        return text
    path = storage.local_path(text).expanduser()
    return os.path.abspath(path) if path.exists() else text


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights a model source resolves to: ``location`` (absolute folder, ``s3://`` prefix or
    ``hub-id@revision``) and ``weights_sha256`` (of its safetensors files, in name order)."""

    location: str
    weights_sha256: str


_identities: dict[tuple, ModelIdentity] = {}
_identity_lock = threading.Lock()


def _hash_weights(folder: Path) -> str:
    digest = hashlib.sha256()
    weights = sorted(folder.glob(f"*{WEIGHT_SUFFIX}"))
    if not weights:
        raise InvalidInput(f"{folder}: no safetensors weights")
    for path in weights:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_identity(source: str | os.PathLike) -> ModelIdentity:
    """The :class:`ModelIdentity` of a model source (resolved as :func:`resolve_model_source` does).

    Hashing reads the weights once per process and file state (size, modification time).
    """
    text = str(source)
    folder = Path(resolve_model_source(text))
    if converter.is_conversion_spec(text):  # the source converted, not this host's cache folder
        location = converter.canonical_spec(text)
    elif storage.is_remote(text):
        location = text
    elif not storage.local_path(text).exists():  # a hub id: the snapshot folder is named by its commit
        location = f"{text}@{folder.name}"
    else:
        location = str(folder.resolve())
    stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob(f"*{WEIGHT_SUFFIX}")))
    key = (str(folder.resolve()), stats)
    with _identity_lock:
        if key not in _identities:
            _identities[key] = ModelIdentity(location, _hash_weights(folder))
        return _identities[key]
