"""Reading untrusted PyTorch checkpoints: tensors only, no pickled code ever run.

A checkpoint is fetched or hashed once (:func:`fetch_checkpoint`: local file or ``s3://`` object, size
bounded, streamed to disk with its sha256), then :func:`read_checkpoint` reads it by what the bytes are,
not by the name's suffix:

- a ``torch.save`` zip archive: ``torch.load(weights_only=True)``, whose unpickler builds tensors and plain
  containers only and refuses any other global (a pickle that would run code is :class:`UnsafeInput`);
- a TorchScript archive (OpenAI's original ``ViT-B-32.pt``): ``torch.jit.load`` would compile and run the
  archive's code, so its ``data.pkl`` is read by :class:`_ArchiveUnpickler` instead, which maps TorchScript's
  module classes to an inert attribute holder and admits no other global besides tensor rebuilding;
- safetensors (a JSON header, no code by design);
- the legacy (pre-1.6) ``torch.save`` format, again with ``weights_only=True``.

Zip archives are verified first (central directory, CRCs, sizes), so a truncated or corrupt file is a clear
:class:`InvalidInput` naming the file, not a crash deep inside torch. Every read takes its size limit
(:data:`rsclip.model.convert.converter.MAX_CHECKPOINT_BYTES` unless a caller gives another).
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rsclip.runtime import storage
from rsclip.errors import InvalidInput, LimitExceeded, NotFound, UnsafeInput
from rsclip.runtime.reporting import one_line

CHUNK = 8 * 1024 * 1024
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
# TorchScript's storage classes, by the name its pickle uses
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint on local disk: ``path`` to read, ``source`` as named, its ``size`` and ``sha256``."""

    path: Path
    source: str
    size: int
    sha256: str


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_checkpoint(uri: str, max_bytes: int) -> CheckpointFile:
    path = storage.local_path(uri).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f"checkpoint {uri} not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeInput(f"checkpoint {uri} is not a regular file")
    if st.st_size > max_bytes:
        raise LimitExceeded(f"checkpoint {uri} is {st.st_size} bytes, more than the limit of {max_bytes}")
    return CheckpointFile(path.resolve(), uri, st.st_size, _hash_file(path))


def fetch_checkpoint(uri: str, workdir: Path, max_bytes: int) -> CheckpointFile:
    """A local, hashed copy of the checkpoint at ``uri`` (a local file is hashed where it is; an ``s3://``
    object is streamed into ``workdir``). Raises ``NotFound``, ``UnsafeInput`` (not a regular file) or
    ``LimitExceeded`` (more than ``max_bytes``, checked before and while reading)."""
    if not storage.is_remote(uri):
        return _local_checkpoint(uri, max_bytes)
    with storage.failures(uri):  # an unreachable store or a denied object: one line naming it
        fs, path = storage.filesystem(uri)
        size = int(fs.info(path).get("size") or 0)
        if size > max_bytes:
            raise LimitExceeded(f"checkpoint {uri} is {size} bytes, more than the limit of {max_bytes}")
        target = workdir / "checkpoint"
        digest, written = hashlib.sha256(), 0
        with fs.open(path, "rb") as src, open(target, "wb") as dst:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                written += len(chunk)
                if written > max_bytes:
                    raise LimitExceeded(f"checkpoint {uri} is more than the limit of {max_bytes} bytes")
                digest.update(chunk)
                dst.write(chunk)
    return CheckpointFile(target, uri, written, digest.hexdigest())


def _verify_zip(archive: zipfile.ZipFile, name: str, max_bytes: int) -> None:
    """Every member within limits and intact (CRC): a truncated or corrupted archive fails here, clearly."""
    total = sum(info.file_size for info in archive.infolist())
    if total > max_bytes:
        raise LimitExceeded(f"{name}: the archive unpacks to {total} bytes, more than the limit of {max_bytes}")
    bad = archive.testzip()
    if bad is not None:
        raise InvalidInput(f"{name}: archive member {bad} is corrupt (CRC mismatch)")


def _torch_load(path: Path, name: str, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc) or "Unsupported operand" in str(exc):  # not a pickle
            raise InvalidInput(f"{name}: cannot read the checkpoint (not a PyTorch file, or corrupt): "
                               f"{one_line(exc)}") from None
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"the global {found.group(1)}" if found else "an object that is not a tensor"
        raise UnsafeInput(f"{name}: refused, its pickle would build {what}; only tensors are read from "
                          "checkpoints (a full unpickle could run code)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot read the checkpoint (truncated or corrupt?): {one_line(exc)}") from None


class _ScriptObject:
    """Stands in for a TorchScript class (a module): it keeps the attributes the archive gives it."""

    def __init__(self, *args):
        self.attributes: dict = {}

    def __setstate__(self, state):
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _identity(value, *args):
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript archive's ``data.pkl``: module classes become :class:`_ScriptObject`, storages
    are read from the archive's ``data/`` members; any other global is refused (nothing is ever called but
    these holders, ``OrderedDict`` and the tensor view above)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, name: str):
        super().__init__(file)
        self.archive, self.prefix, self.name = archive, prefix, name
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch.jit._pickle", "build_intlist"): _identity,
                   ("torch.jit._pickle", "build_tensorlist"): _identity,
                   ("torch.jit._pickle", "build_doublelist"): _identity,
                   ("torch.jit._pickle", "build_boollist"): _identity,
                   ("torch.jit._pickle", "restore_type_tag"): _identity}
        if (module, name) not in allowed:
            raise UnsafeInput(f"{self.name}: refused, the TorchScript archive's pickle names {module}.{name}")
        return allowed[(module, name)]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise InvalidInput(f"{self.name}: unexpected persistent id in the TorchScript archive")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
            tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            if tensor.numel() < numel:
                raise InvalidInput(f"{self.name}: storage {key} is shorter than its tensors say")
            self.storages[key] = tensor
        return self.storages[key]


def _script_tensors(obj: _ScriptObject, prefix: str, out: dict, depth: int = 0) -> None:
    """The tensors in a TorchScript module tree under their state-dict names (``visual.conv1.weight``)."""
    if depth > 64:
        raise InvalidInput("TorchScript module tree is nested too deep")
    for attr, value in obj.attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + attr] = value
        elif isinstance(value, _ScriptObject):
            _script_tensors(value, f"{prefix}{attr}.", out, depth + 1)


def _read_torchscript(archive: zipfile.ZipFile, data_pkl: str, name: str) -> dict:
    prefix = data_pkl.rsplit("/", 1)[0]
    byteorder = f"{prefix}/byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
        raise InvalidInput(f"{name}: big-endian TorchScript archives are not supported")
    with archive.open(data_pkl) as f:
        try:
            root = _ArchiveUnpickler(f, archive, prefix, name).load()
        except UnsafeInput:
            raise
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InvalidInput(f"{name}: cannot read the TorchScript archive: {one_line(exc)}") from None
    if not isinstance(root, _ScriptObject):
        raise InvalidInput(f"{name}: the TorchScript archive does not hold a module")
    tensors: dict = {}
    _script_tensors(root, "", tensors)
    return tensors


def _is_safetensors(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and header_len <= min(size - 8, SAFETENSORS_MAX_HEADER)


def _read_safetensors(path: Path, name: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError for truncated or bad headers
        raise InvalidInput(f"{name}: cannot read the safetensors file (truncated or corrupt?): "
                           f"{one_line(exc)}") from None


def read_checkpoint(path: Path, name: str, max_bytes: int) -> tuple[object, str]:
    """``(object, format)`` of the checkpoint file at ``path`` (``name`` is how errors call it); format is
    ``torch``, ``torchscript``, ``safetensors`` or ``torch-legacy``. Raises ``UnsafeInput`` for pickles that
    would build anything but tensors and containers, ``InvalidInput`` for truncated or corrupt files."""
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                _verify_zip(archive, name, max_bytes)
                names = archive.namelist()
                pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
                if len(pickles) != 1:
                    raise InvalidInput(f"{name}: a zip file, but not a PyTorch checkpoint (no single data.pkl)")
                if any(n.endswith("/constants.pkl") for n in names):
                    return _read_torchscript(archive, pickles[0], name), "torchscript"
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
            raise InvalidInput(f"{name}: cannot read the archive (truncated or corrupt?): {one_line(exc)}") from None
        return _torch_load(path, name, mmap=True), "torch"
    if _is_safetensors(path, size):
        return _read_safetensors(path, name), "safetensors"
    return _torch_load(path, name, mmap=False), "torch-legacy"


def state_dict_of(obj: object, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a plain state dict, or its ``state_dict`` entry (open_clip's
    training checkpoints, which also hold the optimiser); ``module.`` prefixes (DDP) are removed. Raises
    ``InvalidInput`` when it is not a mapping of names to tensors."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise InvalidInput(f"{name}: holds no state dict (a mapping of parameter names to tensors)")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InvalidInput(f"{name}: entry {key!r} is not a tensor; not a state dict")
    if all(key.startswith("module.") for key in obj):
        obj = {key[len("module."):]: value for key, value in obj.items()}
    return dict(obj)



def check_keys(state: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]], name: str, what: str,
               hint: str = "") -> None:
    """Raise ``InvalidInput`` naming ``name`` and the first offending key unless ``state`` has exactly the keys
    of ``want`` with those shapes and floating-point values (``what`` names the expected layout; ``hint`` is
    appended to the message). A one-element tensor stands for a scalar (``logit_scale``)."""
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing:
        raise InvalidInput(f"{name}: key {missing[0]!r} is missing ({len(missing)} of {len(want)} keys of "
                           f"{what} missing){hint}")
    if extra:
        raise InvalidInput(f"{name}: unexpected key {extra[0]!r} ({len(extra)} keys that {what} does not "
                           f"have){hint}")
    for key, shape in want.items():
        got = tuple(state[key].shape)
        if got != shape and not (shape == () and state[key].numel() == 1):
            raise InvalidInput(f"{name}: key {key!r} has shape {list(got)}, {what} expects {list(shape)}{hint}")
        if not state[key].is_floating_point():
            raise InvalidInput(f"{name}: key {key!r} holds {state[key].dtype} values, not floating point")
