"""Object storage, in one place: every client rsclip uses is configured here from the same AWS variables.

rsclip reads and writes ``s3://`` through four clients: s3fs (listing, chips, models, small files), LanceDB's
object store (tables), pyarrow (Ray Train's checkpoints) and GDAL (raster range reads). All of them take
their settings from :func:`aws_settings` (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``) and the same timeouts,
so one setting points the whole system at one store and a dead endpoint fails within seconds everywhere.
Without keys the clients use their own credential chains (instance profile, pod role, ``~/.aws``).
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from rsclip.errors import InvalidInput, LimitExceeded, NotFound, RsclipError, StoreUnavailable, UnsafeInput
from rsclip.runtime import hosts
from rsclip.runtime.faults import store_fault
from rsclip.runtime.reporting import one_line

if TYPE_CHECKING:  # fsspec is imported where a filesystem is made: the command line answers without it
    import fsspec

S3_SCHEMES = ("s3", "s3a")
# Rasters (COGs) named by a STAC catalog are also read over plain HTTP(S), by GDAL only (/vsicurl/ range reads).
# Which of them may be fetched is rsclip.runtime.hosts' rule (ALLOW_PRIVATE_HTTP: loopback and private networks).
HTTP_SCHEMES = hosts.HTTP_SCHEMES
ALLOW_PRIVATE_HTTP = hosts.ALLOW_PRIVATE_HTTP
# Seconds before a connection attempt / a silent read gives up: faults surface quickly, nothing waits forever.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
RETRIES = 3
# GDAL's block cache per process: decoded tiles of the rasters being read, shared by the windows cut from them.
GDAL_CACHE_BYTES = 256 * 1024 * 1024
# The most bytes read_bytes returns unless told otherwise (a chip, a caption file, a manifest).
MAX_READ_BYTES = 256 * 1024 * 1024
# What a local path may be (POSIX NAME_MAX / PATH_MAX): longer ones are refused before the OS sees them.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
_IMPORT_LOCK = threading.Lock()


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``s3://`` URIs, False for local paths (``file://`` counts as local)."""
    return urlparse(str(uri)).scheme in S3_SCHEMES


def bucket_key(uri: str | os.PathLike) -> str:
    """``bucket/key`` of an ``s3://`` URI, the key exactly as written: an object name is not a URL, so ``?``,
    ``#``, ``%`` and even tabs and line breaks are part of it (URL parsing would cut the name at ``?`` or ``#``
    and drop the rest, reading another object or none)."""
    return str(uri).split("://", 1)[1]


def local_path(uri: str | os.PathLike) -> Path:
    """The local path for a local ``uri`` (strips ``file://``).

    Raises :class:`InvalidInput` for a path no file system accepts (a NUL character, a name longer than
    :data:`MAX_NAME_BYTES` or a path longer than :data:`MAX_PATH_BYTES`), naming its start.
    """
    text = str(uri)
    text = text[len("file://"):] if text.startswith("file://") else text
    encoded = os.fsencode(text) if "\0" not in text else None
    if encoded is None or len(encoded) > MAX_PATH_BYTES or any(len(p) > MAX_NAME_BYTES for p in encoded.split(b"/")):
        shown = text[:60].replace("\0", "\\0") + ("..." if len(text) > 60 else "")
        raise InvalidInput(f"not a usable path: {shown!r} ({len(text):,} characters; names at most "
                           f"{MAX_NAME_BYTES} bytes, paths at most {MAX_PATH_BYTES}, no NUL)")
    return Path(text)


@contextmanager
def failures(uri: str | os.PathLike) -> Iterator[None]:
    """Failures of the store or the OS on ``uri`` inside the block, as rsclip errors naming ``uri``.

    A fault of the whole store (:func:`rsclip.runtime.faults.store_fault`) becomes :class:`StoreUnavailable`;
    a missing file :class:`NotFound`; any other ``OSError`` (no permission, a symlink loop, an I/O error,
    one object denied) :class:`InvalidInput`. The original first line is kept, so faults stay classifiable.
    Anything else propagates unchanged.
    """
    try:
        yield
    except RsclipError:
        raise
    except Exception as exc:
        fault = store_fault(exc, ignore=(str(uri),))  # a name quoted in the message is no evidence
        if fault is not None and fault.store_wide:
            raise StoreUnavailable(f"{uri!s}: {fault.advice}: {one_line(exc)}") from None
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise NotFound(f"{uri!s} not found ({one_line(exc)})") from None
        if isinstance(exc, OSError):
            reason = exc.strerror or one_line(exc)
            raise InvalidInput(f"{uri!s}: {fault.advice if fault else reason} ({one_line(exc)})") from None
        raise


def join(base: str, name: str) -> str:
    """``name`` resolved against the folder or prefix ``base`` (absolute paths and URIs stay as they are)."""
    if is_remote(name) or name.startswith("/"):
        return name
    return f"{str(base).rstrip('/')}/{name}"


def parent(uri: str) -> str:
    """The folder or prefix holding ``uri``."""
    text = str(uri).rstrip("/")
    return text.rsplit("/", 1)[0] if "/" in text else "."


def aws_settings() -> dict[str, str]:
    """The standard AWS variables that are set, under neutral keys (key, secret, token, region, endpoint)."""
    env = os.environ
    found = {
        "key": env.get("AWS_ACCESS_KEY_ID"),
        "secret": env.get("AWS_SECRET_ACCESS_KEY"),
        "token": env.get("AWS_SESSION_TOKEN"),
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        "endpoint": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
    }
    return {k: v for k, v in found.items() if v}


def lance_storage_options() -> dict[str, str]:
    """``storage_options`` for ``lancedb.connect`` / ``lance.dataset`` from the AWS variables."""
    aws = aws_settings()
    opts: dict[str, str] = {"connect_timeout": f"{CONNECT_TIMEOUT_S}s"}
    for ours, theirs in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key"),
                         ("token", "aws_session_token")):
        if ours in aws:
            opts[theirs] = aws[ours]
    opts["aws_region"] = aws.get("region", "us-east-1")
    if "endpoint" in aws:
        opts["aws_endpoint"] = aws["endpoint"]
        if aws["endpoint"].startswith("http://"):
            opts["allow_http"] = "true"
        # S3-compatible servers answer path-style requests; virtual-hosted style needs DNS per bucket.
        opts["aws_virtual_hosted_style_request"] = "false"
    return opts


def s3fs_options() -> dict[str, Any]:
    """Keyword arguments for ``s3fs.S3FileSystem`` from the AWS variables, with rsclip's timeouts."""
    aws = aws_settings()
    opts: dict[str, Any] = {k: aws[k] for k in ("key", "secret", "token") if k in aws}
    if "endpoint" in aws:
        opts["endpoint_url"] = aws["endpoint"]
    if "region" in aws:
        opts["client_kwargs"] = {"region_name": aws["region"]}
    opts["config_kwargs"] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "retries": {"max_attempts": RETRIES, "mode": "standard"},
    }
    return opts


def import_s3fs(attempts: int = 3):
    """``import s3fs``, once per process, retried when another thread is importing its dependencies.

    In a Ray worker a background thread may be importing ``aiohttp`` at the moment a task first touches
    S3; aiobotocore then sees a half-initialised ``aiohttp`` and the import fails with ``AttributeError``
    (seen in a decode task of the multi-node training test). A failed import leaves nothing behind in
    ``sys.modules``, so importing again once the other thread is done succeeds.
    """
    with _IMPORT_LOCK:
        for attempt in range(attempts):
            try:
                import s3fs

                return s3fs
            except (AttributeError, ImportError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem for ``uri`` and the path to use with it.

    ``s3://bucket/key`` gives an s3fs filesystem configured by :func:`s3fs_options` and ``bucket/key``;
    anything else gives the local filesystem and an absolute path.
    """
    import fsspec

    text = str(uri)
    if is_remote(text):
        return import_s3fs().S3FileSystem(**s3fs_options()), bucket_key(text).rstrip("/")
    return fsspec.filesystem("file"), str(local_path(text).resolve())


def arrow_filesystem(uri: str):
    """A pyarrow filesystem and path for ``uri`` (Ray Train's storage, :func:`rsclip.runtime.reads.read_many`),
    S3 settings as everywhere else; one S3 filesystem per process and settings (pyarrow's are thread-safe)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(local_path(uri).resolve())
    return _arrow_s3(tuple(sorted(aws_settings().items()))), bucket_key(uri).rstrip("/")


@functools.lru_cache(maxsize=4)
def _arrow_s3(settings: tuple[tuple[str, str], ...]):
    import pyarrow.fs as pafs

    aws = dict(settings)
    kwargs: dict[str, Any] = {"region": aws.get("region", "us-east-1"), "connect_timeout": CONNECT_TIMEOUT_S,
                              "request_timeout": READ_TIMEOUT_S}
    if "key" in aws:
        kwargs.update(access_key=aws["key"], secret_key=aws.get("secret"), session_token=aws.get("token"))
    if "endpoint" in aws:
        endpoint = aws["endpoint"]
        kwargs["scheme"] = "http" if endpoint.startswith("http://") else "https"
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def gdal_options() -> dict[str, str | int]:
    """GDAL configuration for reading rasters: COG range reads over HTTP, and GDAL's hardening for
    untrusted input (credentials go through :func:`gdal_session`).

    Following GDAL's security guidance for untrusted files (gdal.org/user/security.html): only an allow-list
    of drivers opens anything (:data:`rsclip.geo.raster.ALLOWED_DRIVERS`, no VRT or header-plus-raw format
    that reads files a dataset names), no sidecar or directory listing (``GDAL_DISABLE_READDIR_ON_OPEN``,
    ``GDAL_PAM_ENABLED``), ``/vsicurl`` only for raster suffixes, no Python or raw bands in VRTs, and no
    CRS grid fetched from the network (``PROJ_NETWORK``).
    An ``AWS_ENDPOINT_URL`` (SeaweedFS, MinIO) becomes GDAL's ``AWS_S3_ENDPOINT``/``AWS_HTTPS``/path-style.
    """
    aws = aws_settings()
    opts: dict[str, str | int] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_HTTP_MAX_RETRY": str(RETRIES),
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_TIMEOUT": str(READ_TIMEOUT_S * 2),
        "GDAL_HTTP_CONNECTTIMEOUT": str(CONNECT_TIMEOUT_S),
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": str(32 * 1024 * 1024),
        # bytes: rasterio hands an int to GDALSetCacheMax64, so 256 meant 256 bytes, no block cache at all, and every
        # window decoded (and over S3 downloaded) its tiles again: 13x fewer windows per CPU-second (issue 26)
        "GDAL_CACHEMAX": GDAL_CACHE_BYTES,
        # GDAL keeps what it read of a remote file per process (size, header, blocks) and would serve a later
        # open the old content of an object rewritten in place (a Ray worker's second job, a long-lived app):
        # remote files, S3 objects and HTTP(S) COGs alike, are not cached across opens (one open still caches
        # its own blocks: GDAL_CACHEMAX)
        "CPL_VSIL_CURL_NON_CACHED": "/vsis3/:/vsicurl/",
        "GDAL_HTTP_NETRC": "NO",  # never send ~/.netrc credentials to a host a catalog names
        "PROJ_NETWORK": "OFF",  # no CRS grid fetched from the network because a file names it
        "GDAL_PAM_ENABLED": "NO",  # never read or write .aux.xml side files next to untrusted data
        # defence in depth: drivers that read other files are never opened (raster.ALLOWED_DRIVERS)
        "GDAL_VRT_ENABLE_PYTHON": "NO",
        "GDAL_VRT_ENABLE_RAWRASTERBAND": "NO",
    }
    if "endpoint" in aws:
        endpoint = urlparse(aws["endpoint"])
        opts["AWS_S3_ENDPOINT"] = endpoint.netloc + endpoint.path.rstrip("/")
        opts["AWS_HTTPS"] = "NO" if endpoint.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def gdal_session():
    """A rasterio ``AWSSession`` from the AWS variables (rasterio takes credentials only this way); None
    when no key is set, so GDAL's own chain (instance profile, ~/.aws) applies."""
    from rasterio.session import AWSSession

    aws = aws_settings()
    if "key" not in aws:
        return None
    endpoint = urlparse(aws["endpoint"]) if "endpoint" in aws else None
    return AWSSession(
        aws_access_key_id=aws["key"], aws_secret_access_key=aws.get("secret"),
        aws_session_token=aws.get("token"), region_name=aws.get("region"),
        endpoint_url=(endpoint.netloc + endpoint.path.rstrip("/")) if endpoint else None,
    )


def is_http(uri: str | os.PathLike) -> bool:
    """True for ``http://`` and ``https://`` URLs (read by GDAL only)."""
    return urlparse(str(uri)).scheme.lower() in HTTP_SCHEMES


def gdal_path(uri: str) -> str:
    """The GDAL path of a local path, ``s3://bucket/key`` (``/vsis3/bucket/key``) or ``http(s)://`` URL
    (``/vsicurl/URL``: range reads under :func:`gdal_options`'s timeouts and suffix allow-list).

    An http(s) URL is checked by :func:`rsclip.runtime.hosts.check_url` and its redirects resolved here, each
    hop checked (:func:`rsclip.runtime.hosts.final_url`): GDAL always follows redirects itself, so it is given
    the last URL. Raises :class:`UnsafeInput` for a URL without a host, with characters no URL has, whose host
    or a redirect's is a metadata service, resolves to a forbidden address or does not resolve;
    :class:`LimitExceeded` past :data:`rsclip.runtime.hosts.MAX_REDIRECTS` redirects; :class:`InvalidInput` for
    an object whose name holds ``?``."""
    if is_remote(uri):
        key = bucket_key(uri)
        if "?" in key:  # GDAL's suffix allow-list reads the name only up to a "?"
            raise InvalidInput(f"{uri}: GDAL cannot open an object whose name holds '?' (rename it)")
        return f"/vsis3/{key}"
    if is_http(uri):
        return f"/vsicurl/{hosts.final_url(str(uri), timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))}"
    return str(local_path(uri))


def exists(uri: str) -> bool:
    """Whether a file or object exists at ``uri``."""
    fs, path = filesystem(uri)
    return fs.exists(path)


def isdir(uri: str) -> bool:
    """Whether ``uri`` is a folder (or a non-empty prefix)."""
    fs, path = filesystem(uri)
    return fs.isdir(path)


def read_bytes(uri: str | os.PathLike, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """The bytes of a local regular file or an ``s3://`` object of at most ``max_bytes``.

    Raises :class:`NotFound` when it does not exist, :class:`UnsafeInput` for what is not a regular file (a
    device such as ``/dev/zero``, a FIFO, a folder) and :class:`LimitExceeded` above ``max_bytes``; the
    size is checked before reading and again while reading (files that grow, ``/proc``).
    """
    with failures(uri):
        fs, path = filesystem(uri)
        if not is_remote(uri) and not stat.S_ISREG(os.stat(path).st_mode):
            raise UnsafeInput(f"{uri!s} is not a regular file (a device, a pipe or a folder is never read)")
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise LimitExceeded(f"{uri!s} is {size:,} bytes, more than the limit of {max_bytes:,}")
        try:
            with (fs.open(path, "rb") if is_remote(uri) else open(path, "rb")) as f:
                data = f.read(max_bytes + 1)
        except IsADirectoryError:
            raise UnsafeInput(f"{uri!s} is a folder, not a file") from None
    if len(data) > max_bytes:
        raise LimitExceeded(f"{uri!s} is more than the limit of {max_bytes} bytes")
    return data


def is_stream(uri: str | os.PathLike) -> bool:
    """True for a local path that names no file to replace: a pipe, a device, or a descriptor of this process
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``), even one redirected to a regular file."""
    if is_remote(uri):
        return False
    path = os.path.abspath(local_path(uri))
    if os.path.realpath(os.path.dirname(path)).startswith("/proc/") or (
            os.path.islink(path) and os.readlink(path).startswith("/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there yet (a file is made) or not reachable (the write says why)
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_bytes(uri: str, data: bytes | str) -> None:
    """Write (replace) a local file or an ``s3://`` object; a reader never sees a half-written file.

    Local files are written beside the target and renamed into place (folders created), with the mode a plain
    ``open`` gives (``0o666`` less the umask); a stream (:func:`is_stream`) is written to as it is, since a
    rename would replace its name instead of feeding it; an S3 PUT is atomic.
    Failures are rsclip errors naming ``uri`` (:func:`failures`).
    """
    payload = data.encode() if isinstance(data, str) else data
    with failures(uri):
        fs, path = filesystem(uri)
        if is_remote(uri) or is_stream(uri):
            with (fs.open(path, "wb") if is_remote(uri) else open(local_path(uri), "ab")) as f:
                f.write(payload)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}"
        # os.open applies the umask (mkstemp's 0o600 would keep an export from the team it is for)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
