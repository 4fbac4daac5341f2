"""Many objects read at once: the embedding job's chips, fetched with many GETs in flight per task.

One GET costs a core far less CPU through obstore (Rust) or pyarrow's S3 client (C++) than through s3fs
(aiobotocore, pure Python), and many in flight hide the store's latency; errors stay those of
:func:`rsclip.runtime.storage.read_bytes` (BENCHMARKS.md "Scaling inputs").
"""

from __future__ import annotations

import functools
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.runtime import storage

# Objects read_many keeps in flight: enough to hide a store's latency (milliseconds on S3) behind one core's
# decoding; each holds at most one object in memory.
READS_IN_FLIGHT = 16


def read_many(uris: Sequence[str], max_bytes: int = storage.MAX_READ_BYTES,
              in_flight: int = READS_IN_FLIGHT) -> list[bytes | Exception]:
    """The bytes of each of ``uris`` (local files, ``s3://`` objects; at most ``max_bytes`` each), up to
    ``in_flight`` read at once; each entry is the bytes, or the error
    :func:`~rsclip.runtime.storage.read_bytes` raises for that one.

    ``s3://`` objects go through obstore when it is installed (Rust: one GET ranged to ``max_bytes`` + 1, a
    sixth of s3fs's CPU per object, BENCHMARKS.md "Scaling inputs"), else pyarrow's S3 client (C++: a HEAD
    gives the size, checked against ``max_bytes`` before the GET; a third of s3fs's CPU). An object that
    client fails on is read again by ``read_bytes`` (s3fs), so errors (and how
    :mod:`rsclip.runtime.faults` classifies them) are the ones every other read reports. Raises nothing
    itself: a caller decides per object.
    """
    def one(uri: str) -> bytes | Exception:
        if storage.is_remote(uri):
            try:
                return _read_fast(uri, max_bytes)
            except LimitExceeded as exc:
                return exc
            except Exception:  # noqa: BLE001 - read again below for the error every other read reports
                pass
        try:
            return storage.read_bytes(uri, max_bytes)
        except Exception as exc:  # noqa: BLE001 - the caller decides per object
            return exc

    if len(uris) <= 1:
        return [one(str(u)) for u in uris]
    return list(_reader_pool(in_flight).map(one, [str(u) for u in uris]))


def _read_fast(uri: str, max_bytes: int) -> bytes:
    """One object through obstore when installed (one ranged GET), else pyarrow (a HEAD, then the GET)."""
    try:
        import obstore
    except ImportError:
        return _read_arrow(uri, max_bytes)
    bucket, _, key = storage.bucket_key(uri).partition("/")
    # the range asks for one byte past the bound: an object over it is refused without reading the rest
    data = bytes(obstore.get(_obstore(tuple(sorted(storage.lance_storage_options().items())), bucket), key,
                             options={"range": (0, max_bytes + 1)}).bytes())
    if len(data) > max_bytes:
        raise LimitExceeded(f"{uri!s} is more than the limit of {max_bytes:,} bytes")
    return data


@functools.lru_cache(maxsize=8)
def _obstore(settings: tuple[tuple[str, str], ...], bucket: str):
    from obstore.store import S3Store

    # the settings LanceDB's object store gets (the same Rust client underneath), with rsclip's timeouts
    config = dict(settings)
    client = {k: config.pop(k) for k in ("allow_http", "connect_timeout") if k in config}
    client["timeout"] = f"{storage.READ_TIMEOUT_S}s"
    retry = {"max_retries": storage.RETRIES, "retry_timeout": timedelta(seconds=storage.READ_TIMEOUT_S)}
    return S3Store(bucket, config=config, client_options=client, retry_config=retry)


def _read_arrow(uri: str, max_bytes: int) -> bytes:
    fs, path = storage.arrow_filesystem(uri)
    with fs.open_input_file(path) as f:  # never open_input_stream: it would decompress a name ending .gz
        size = f.size()
        if size > max_bytes:
            raise LimitExceeded(f"{uri!s} is {size:,} bytes, more than the limit of {max_bytes:,}")
        data = f.read(size)
    if len(data) != size:
        raise InvalidInput(f"{uri!s}: read {len(data):,} bytes of {size:,}")
    return data


@functools.lru_cache(maxsize=2)
def _reader_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, threads), thread_name_prefix="rsclip-read")
