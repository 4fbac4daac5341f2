"""Listing an archive (``s3://`` prefix or local folder), and the probe of its store.

The driver cuts the archive into partitions (:func:`partitions`: its folders, a few levels down, through
S3 delimiters or ``os.scandir``) and listing tasks stream the files of each (:func:`list_partition`, page by
page), so no process holds the whole listing (:mod:`rsclip.ingest.sources`). Cutting is also the job's probe
of the store: a missing bucket, rejected credentials or an unreachable endpoint raise
:class:`~rsclip.errors.StoreUnavailable` within seconds (the storage layer's timeouts), before any cluster
work starts.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Iterator, NamedTuple

from rsclip.runtime import faults, reporting
from rsclip.runtime import storage
from rsclip.geo.images import IMAGE_SUFFIXES
from rsclip.errors import NotFound, StoreUnavailable

# How far the driver splits an archive for its listing tasks: folder levels, and entries of one level.
MAX_SPLIT_DEPTH = 3
MAX_SPLIT_ENTRIES = 10_000


class ArchiveFile(NamedTuple):
    """One file of an archive: its uri, size in bytes and version tag (ETag on S3, size and mtime locally).

    A source listed from a STAC catalog (:mod:`rsclip.ingest.stac`) also carries its item's ``datetime``
    (microseconds since the epoch, None: unknown), ``item_id`` and ``cloud_cover``, its size is -1
    (unknown), and ``problem`` says why it cannot be read (an item without the asset asked for): it becomes
    one error row."""

    uri: str
    size: int
    version: str = ""
    datetime: int | None = None
    item_id: str = ""
    cloud_cover: float | None = None
    problem: str = ""


def store_error(exc: BaseException, uri: str) -> StoreUnavailable:
    """A :class:`StoreUnavailable` naming ``uri`` and the classified cause of ``exc``."""
    fault = faults.store_fault(exc)
    cause = fault.advice if fault is not None else "the object store failed"
    if fault is not None and fault.kind == faults.UNREACHABLE:
        endpoint = storage.aws_settings().get("endpoint", "the S3 endpoint")
        cause = f"cannot reach {endpoint} (check AWS_ENDPOINT_URL and that the server is up)"
    return StoreUnavailable(f"{uri}: {cause}: {reporting.one_line(exc)}")


def check_bucket(uri: str) -> None:
    """Raise :class:`StoreUnavailable` unless the bucket of an ``s3://`` ``uri`` exists and the store lets us
    in (one or two requests; nothing for local paths).

    HeadBucket needs list permission on the whole bucket, which a role limited to a prefix lacks: when it is
    denied, one LIST of ``uri``'s own prefix decides instead (wrong credentials fail there too).
    """
    if not storage.is_remote(uri):
        return
    fs, path = storage.filesystem(uri)
    bucket, _, key = path.partition("/")
    for call, kwargs in (("head_bucket", {}), ("list_objects_v2", {"Prefix": key, "MaxKeys": 1})):
        try:
            fs.call_s3(call, Bucket=bucket, **kwargs)
            return
        except FileNotFoundError as exc:
            raise StoreUnavailable(f"bucket {bucket!r} of {uri} does not exist ({reporting.one_line(exc)})") from None
        except Exception as exc:
            fault = faults.store_fault(exc)
            if call != "head_bucket" or fault is None or fault.kind != faults.DENIED:
                raise store_error(exc, uri) from None


def store_down(exc: BaseException, uri: str) -> StoreUnavailable | None:
    """The :class:`StoreUnavailable` to stop a job with when ``exc``, raised while reading ``uri``, is a fault
    of the whole store; None when it concerns that object only (record it and go on).

    A fault that reads as store-wide is confirmed by probing ``uri``'s bucket again: an object whose name
    holds "NoSuchBucket" or "Connection refused", or one slow answer, must not stop the job. Local files
    are never a fault of the whole store.
    """
    fault = faults.store_fault(exc, ignore=(uri,))
    if not isinstance(exc, StoreUnavailable) and (fault is None or not fault.store_wide):
        return None
    if not storage.is_remote(uri):
        return None
    try:
        check_bucket(uri)
    except StoreUnavailable as down:
        return down
    return None


def _version(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
    return f"{info.get('size')}-{mtime}"


def _is_hidden(path: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(path).parts)


def archive_root(uri: str) -> str:
    """The folder every uri :func:`list_archive` gives for ``uri`` lies under, written as those uris are
    (``s3://bucket/prefix``, an absolute local path; for one local file, that file's path)."""
    _, root = storage.filesystem(uri)
    root = root.rstrip("/")
    return f"s3://{root}" if storage.is_remote(uri) else root


class Partition(NamedTuple):
    """A part of an archive that one listing task lists: the files directly in the folder or prefix ``path``
    (a local absolute path or ``s3://bucket/prefix``; or one local file), and with ``recursive`` those in every
    folder below it too."""

    path: str
    recursive: bool


def _archive_path(uri: str) -> str:
    """``uri`` checked (a missing local folder raises NotFound, a bad store StoreUnavailable) and written as
    the uris listed under it are."""
    if storage.is_remote(uri):
        check_bucket(uri)
    elif not storage.local_path(uri).exists():
        raise NotFound(f"archive folder not found: {uri}")
    return archive_root(uri)


def partitions(uri: str, want: int = 1) -> list[Partition]:
    """The archive at ``uri`` (``s3://`` prefix, local folder, or one local file) cut into partitions for
    listing tasks: its folders split level by level (hidden ones left out) until there are ``want``
    partitions or :data:`MAX_SPLIT_DEPTH` levels; a folder with more than :data:`MAX_SPLIT_ENTRIES` entries
    in one level is not split (one task lists it whole: the driver never pages through a large folder).
    Raises as :func:`list_archive`."""
    root = _archive_path(uri)
    if not storage.is_remote(root) and not os.path.isdir(root):
        return [Partition(root, False)]
    done: list[Partition] = []
    todo = [root]
    for _ in range(MAX_SPLIT_DEPTH):
        if len(done) + len(todo) >= want or not todo:
            break
        below: list[str] = []
        for folder in todo:
            level = _level(folder)
            if level is None:
                done.append(Partition(folder, True))
                continue
            folders, has_files = level
            if has_files:
                done.append(Partition(folder, False))
            below.extend(folders)
        todo = below
    return done + [Partition(folder, True) for folder in todo]


def _level(folder: str) -> tuple[list[str], bool] | None:
    """The visible subfolders of ``folder`` and whether it holds files itself; None past
    :data:`MAX_SPLIT_ENTRIES` entries."""
    if storage.is_remote(folder):
        bucket, prefix = _bucket_prefix(folder)
        folders, has_files, seen = [], False, 0
        for page in _pages(folder, bucket, prefix, delimiter="/"):
            folders += [f"s3://{bucket}/{p['Prefix'].rstrip('/')}" for p in page.get("CommonPrefixes", ())
                        if not p["Prefix"][len(prefix):].startswith(".")]
            contents = page.get("Contents", ())
            has_files |= any(not o["Key"].endswith("/") for o in contents)
            seen += len(contents) + len(page.get("CommonPrefixes", ()))
            if seen > MAX_SPLIT_ENTRIES:
                return None
        return folders, has_files
    folders, has_files = [], False
    with os.scandir(folder) as entries:
        for i, entry in enumerate(entries):
            if i >= MAX_SPLIT_ENTRIES:
                return None
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry.path)
            else:
                has_files = True
    return sorted(folders), has_files


def _bucket_prefix(uri: str) -> tuple[str, str]:
    """Bucket and key prefix (ending in ``/``, or empty for a whole bucket) of an ``s3://`` folder."""
    bucket, _, key = storage.bucket_key(uri).partition("/")
    key = key.strip("/")
    return bucket, f"{key}/" if key else ""


def _pages(uri: str, bucket: str, prefix: str, delimiter: str = ""):
    """The pages of a ListObjectsV2 of ``prefix`` (store faults raise :class:`StoreUnavailable` naming
    ``uri``)."""
    fs, _ = storage.filesystem(uri)
    token = None
    while True:
        args = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {}),
                **({"ContinuationToken": token} if token else {})}
        try:
            page = fs.call_s3("list_objects_v2", **args)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise store_error(exc, uri) from None
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def list_partition(part: Partition) -> Iterator[ArchiveFile]:
    """The image files of one partition (:func:`partitions`), streamed page by page (hidden files and folders
    below it skipped); in uri order within each folder."""
    if storage.is_remote(part.path):
        bucket, prefix = _bucket_prefix(part.path)
        for page in _pages(part.path, bucket, prefix, "" if part.recursive else "/"):
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.lower().endswith(IMAGE_SUFFIXES) and not _is_hidden(key[len(prefix):]):
                    yield ArchiveFile(f"s3://{bucket}/{key}", int(obj.get("Size") or 0), _version(obj))
        return
    if not os.path.isdir(part.path):
        yield from _local_files([part.path])
        return
    yield from _walk(part.path, part.recursive, set())


def _walk(folder: str, recursive: bool, visited: set) -> Iterator[ArchiveFile]:
    """The image files of a local ``folder`` (and below it when ``recursive``; a folder reached twice through
    links is listed once)."""
    stat = os.stat(folder)
    if (stat.st_dev, stat.st_ino) in visited:
        return
    visited.add((stat.st_dev, stat.st_ino))
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    yield from _local_files([e.path for e in entries if not e.is_dir() and e.name.lower().endswith(IMAGE_SUFFIXES)])
    if recursive:
        for entry in entries:
            if entry.is_dir():
                yield from _walk(entry.path, True, visited)


def _local_files(paths: list[str]) -> Iterator[ArchiveFile]:
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:  # removed since it was listed, or a dangling link: not in the archive
            continue
        yield ArchiveFile(path, int(stat.st_size), f"{stat.st_size}-{stat.st_mtime}")


def list_archive(uri: str) -> list[ArchiveFile]:
    """Every image file under ``uri`` (``s3://`` prefix, local folder, or one local file), sorted by uri, in
    this process (the embedding job lists in Ray tasks: :func:`partitions`, :func:`list_partition`).

    Hidden files and folders are skipped. A prefix or folder without images gives ``[]``. Raises
    :class:`~rsclip.errors.NotFound` for a missing local folder and
    :class:`~rsclip.errors.StoreUnavailable` for a missing bucket, refused credentials and an
    unreachable endpoint.
    """
    return sorted(f for part in partitions(uri) for f in list_partition(part))
