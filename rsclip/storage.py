"""Object-storage access: one place that turns the standard AWS variables into client settings.

rsclip reads and writes ``s3://`` through three clients (s3fs, LanceDB's object store, Arrow/GDAL under
Ray Data and rasterio). All of them are configured from the same variables, so one setting points the
whole system at one store: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL`` (for S3-compatible stores such as
SeaweedFS or MinIO). Without them the clients fall back to their own credential chains (instance
profiles, ``~/.aws``), which is what a cluster on AWS uses.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

S3_SCHEMES = ("s3", "s3a")
_IMPORT_LOCK = threading.Lock()


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``s3://`` URIs, False for local paths (``file://`` counts as local)."""
    return urlparse(str(uri)).scheme in S3_SCHEMES


def local_path(uri: str | os.PathLike) -> Path:
    """The local path for a local ``uri`` (strips ``file://``)."""
    text = str(uri)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def aws_settings() -> dict[str, str]:
    """The standard AWS variables that are set, under neutral keys."""
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
    """``storage_options`` for ``lancedb.connect`` / ``lance.dataset`` built from the AWS variables."""
    aws = aws_settings()
    opts: dict[str, str] = {}
    if "key" in aws:
        opts["aws_access_key_id"] = aws["key"]
    if "secret" in aws:
        opts["aws_secret_access_key"] = aws["secret"]
    if "token" in aws:
        opts["aws_session_token"] = aws["token"]
    opts["aws_region"] = aws.get("region", "us-east-1")
    if "endpoint" in aws:
        opts["aws_endpoint"] = aws["endpoint"]
        if aws["endpoint"].startswith("http://"):
            opts["allow_http"] = "true"
        # S3-compatible servers answer path-style requests; virtual-hosted style needs DNS per bucket.
        opts["aws_virtual_hosted_style_request"] = "false"
    return opts


def s3fs_options() -> dict[str, Any]:
    """Keyword arguments for ``s3fs.S3FileSystem`` built from the AWS variables."""
    aws = aws_settings()
    opts: dict[str, Any] = {}
    if "key" in aws:
        opts["key"] = aws["key"]
    if "secret" in aws:
        opts["secret"] = aws["secret"]
    if "token" in aws:
        opts["token"] = aws["token"]
    client: dict[str, Any] = {}
    if "endpoint" in aws:
        opts["endpoint_url"] = aws["endpoint"]
    if "region" in aws:
        client["region_name"] = aws["region"]
    if client:
        opts["client_kwargs"] = client
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

    ``s3://bucket/key`` gives an s3fs filesystem configured from the AWS variables and ``bucket/key``;
    anything else gives the local filesystem and an absolute path.
    """
    text = str(uri)
    if is_remote(text):
        s3fs = import_s3fs()
        parsed = urlparse(text)
        return s3fs.S3FileSystem(**s3fs_options()), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return fsspec.filesystem("file"), str(local_path(text).resolve())
