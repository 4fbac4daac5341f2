"""Model folders published atomically: a reader gets the old folder or the new one, complete, never a part.

:func:`staged_folder` is the one way rsclip writes a model folder: into a new folder beside it, renamed into
place when complete (the model cache's fetches and conversions, ``rsclip convert-model``, each version below).
:func:`publish` replaces the model at ``OUTPUT/model``: a reader gets the old model or the new one, complete,
whatever happens while a new one is written.

- Local: every publication is a complete folder ``<target>-versions/<id>/``, and ``<target>`` is a relative
  symbolic link to the current one, switched by one ``rename`` (atomic on POSIX). ``from_pretrained(target)``
  and :func:`rsclip.load_model` follow the link.
- ``s3://`` (no rename, and objects change one at a time): every publication is a prefix
  ``<target>/versions/<id>/`` and the small object ``<target>/CURRENT`` names the current one (one PUT,
  atomic). :func:`current_prefix` resolves it; the model loader (:mod:`rsclip.model.sources`) reads
  through it.

A publication writes its files first and switches the link or pointer last, so a crash leaves at most an
unreferenced version, which the next publication removes. The version it replaces is kept (a reader that
resolved it a moment before the switch can finish); older ones are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from rsclip.runtime import storage
from rsclip.errors import InvalidInput, NotFound, UnsafeInput

POINTER = "CURRENT"  # s3: the object naming the current version
VERSIONS = "versions"  # s3: the folder of versions under the model prefix
LOCAL_VERSIONS = "-versions"  # local: suffix of the sibling folder of versions
PARTIAL = ".partial"  # local: a version still being written
_VERSION_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")


@contextlib.contextmanager
def staged_folder(target: Path, *, prefix: str = ".staging-", suffix: str = "",
                  keep_existing: bool = False) -> Iterator[Path]:
    """A new, empty folder beside ``target`` to write into, renamed to ``target`` when the block ends.

    The folder is named ``prefix``, random characters and ``suffix``, in ``target``'s parent (made if missing),
    so the rename is one step on one file system (atomic on POSIX): a folder at ``target`` is always complete.
    An empty folder at ``target`` is replaced. A folder that another process renamed there first is kept with
    ``keep_existing`` (it holds the same files), else the rename's ``OSError`` propagates. When the block
    raises, the staged folder and what it holds are removed and ``target`` is as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=suffix))
    try:
        yield staging
        try:
            staging.rename(target)
        except OSError:
            if not (keep_existing and target.is_dir()):  # lost a race to a process writing the same folder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def new_version_id() -> str:
    """A fresh version name that sorts by time (UTC) and never collides."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def current_prefix(uri: str) -> str:
    """The ``s3://`` prefix holding the files of the model at ``uri``: the version its ``CURRENT`` names, else
    ``uri`` itself (a model written in place). Raises :class:`UnsafeInput` for a pointer naming no valid
    version."""
    uri = uri.rstrip("/")
    fs, path = storage.filesystem(f"{uri}/{POINTER}")
    fs.invalidate_cache(path)  # a pointer read earlier in this process may have been switched since
    try:
        text = storage.read_bytes(f"{uri}/{POINTER}", max_bytes=256).decode("utf-8", errors="replace").strip()
    except NotFound:
        return uri
    if not _VERSION_ID.match(text):
        raise UnsafeInput(f"{uri}/{POINTER} names no valid model version: {text[:80]!r}")
    return f"{uri}/{VERSIONS}/{text}"


def unpublished(root: str, path: str) -> bool:
    """True for a file under ``root``'s versions folder: part of a version, not of a model written in place."""
    return path[len(root):].lstrip("/").startswith(VERSIONS + "/")


def publish(files: Sequence[Path], target: str) -> str:
    """Make the regular files ``files`` (flat, distinct names) the model folder at ``target``, atomically.

    Returns the version id. Raises :class:`InvalidInput` for no files, a name used twice or something that is
    not a regular file, and the errors of :func:`rsclip.runtime.storage.failures` for a store or disk fault; a
    failure while copying leaves the model at ``target`` as it was.
    """
    names = [f.name for f in files]
    if not files or len(set(names)) != len(names):
        raise InvalidInput(f"a model publication needs distinct files, got {names}")
    for f in files:
        if f.is_symlink() or not f.is_file():
            raise InvalidInput(f"{f} is not a regular file")
    version = new_version_id()
    with storage.failures(target):  # a store or disk fault is one line naming the target
        if storage.is_remote(target):
            _publish_remote(files, target.rstrip("/"), version)
        else:
            _publish_local(files, storage.local_path(target), version)
    return version


def _copy_local(files: Sequence[Path], folder: Path) -> None:
    for f in files:
        shutil.copyfile(f, folder / f.name)
        with open(folder / f.name, "rb") as written:
            os.fsync(written.fileno())  # the switch must never point at files still in the page cache only


def _publish_local(files: Sequence[Path], target: Path, version: str) -> None:
    versions = target.parent / f"{target.name}{LOCAL_VERSIONS}"
    final = versions / version
    with staged_folder(final, prefix=f"{version}-", suffix=PARTIAL) as staging:  # a crash leaves <id>-*.partial
        _copy_local(files, staging)
    previous = Path(os.readlink(target)).name if target.is_symlink() else None
    link = target.parent / f".{target.name}.{version}.link"
    os.symlink(os.path.relpath(final, target.parent), link)
    if target.is_dir() and not target.is_symlink():
        # a model written in place by an older rsclip becomes the previous version; the path is missing for
        # the instant between the two renames (once per output, on the first publication)
        previous = f"{version}-inplace"
        target.rename(versions / previous)
    os.replace(link, target)
    _prune_local(versions, keep={version, previous})


def _prune_local(versions: Path, keep: set) -> None:
    for entry in versions.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def _publish_remote(files: Sequence[Path], uri: str, version: str) -> None:
    fs, root = storage.filesystem(uri)
    prefix = f"{root}/{VERSIONS}/{version}"
    for f in files:
        fs.put_file(str(f), f"{prefix}/{f.name}")
    fs.invalidate_cache(prefix)
    for f in files:  # every object complete before anyone is pointed at them
        if fs.size(f"{prefix}/{f.name}") != f.stat().st_size:
            raise OSError(f"{uri}: the store does not hold all of {f.name} after writing it")
    current = current_prefix(uri)
    previous = current.rsplit("/", 1)[1] if current != uri else None
    storage.write_bytes(f"{uri}/{POINTER}", version)
    _prune_remote(fs, root, keep={version, previous})


def _prune_remote(fs, root: str, keep: set) -> None:
    fs.invalidate_cache(f"{root}/{VERSIONS}")  # s3fs forgets a listing and its parents', not its children's
    for path in fs.ls(f"{root}/{VERSIONS}", detail=False) if fs.exists(f"{root}/{VERSIONS}") else []:
        if path.rstrip("/").rsplit("/", 1)[1] not in keep:
            fs.rm(path, recursive=True)
    # files of a model written in place (before versions existed) are not read once a version is current
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[1]
        if name not in (POINTER, VERSIONS):
            fs.rm(path, recursive=True)
