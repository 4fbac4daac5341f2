"""The driver's first step: list an archive (``s3://`` prefix or local folder) and probe its store.

Listing is also the job's probe of the store: a missing bucket, rejected credentials or an unreachable
endpoint raise :class:`~rsclip.errors.StoreUnavailable` within seconds (the storage layer's timeouts),
before any cluster work starts.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import NamedTuple

from rsclip.runtime import faults, reporting
from rsclip.runtime import storage
from rsclip.geo.images import IMAGE_SUFFIXES
from rsclip.errors import NotFound, StoreUnavailable


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


def list_archive(uri: str) -> list[ArchiveFile]:
    """Every image file under ``uri`` (``s3://`` prefix, local folder, or one local file), sorted by uri.

    Hidden files and folders are skipped. A prefix or folder without images gives ``[]``. Raises
    :class:`~rsclip.errors.NotFound` for a missing local folder and
    :class:`~rsclip.errors.StoreUnavailable` for a missing bucket, refused credentials and an
    unreachable endpoint.
    """
    remote = storage.is_remote(uri)
    if not remote and not storage.local_path(uri).is_dir():
        if not storage.local_path(uri).is_file():
            raise NotFound(f"archive folder not found: {uri}")
        fs, path = storage.filesystem(uri)
        return [ArchiveFile(path, int(fs.size(path)), _version(fs.info(path)))]
    check_bucket(uri)
    fs, root = storage.filesystem(uri)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as exc:
        raise store_error(exc, uri) from None
    files = []
    for path, info in found.items():
        below = path[len(root):] if path.startswith(root) else path  # the listed folder's own path may be hidden
        if info.get("type", "file") != "file" or not path.lower().endswith(IMAGE_SUFFIXES) or _is_hidden(below):
            continue
        files.append(ArchiveFile(f"s3://{path}" if remote else path, int(info.get("size") or 0), _version(info)))
    return sorted(files)
