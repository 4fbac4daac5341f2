"""The errors rsclip raises on purpose, and the one classifier of object-store faults.

::

    RsclipError                      anything rsclip reports as one line (CLI and jobs: exit status 2)
    ├── InvalidInput (ValueError)    bad arguments, malformed or unreadable input
    │   ├── NotFound                 a table, tile, model, object or folder that is not there
    │   ├── ModelMismatch            vectors or weights of another model than the table's
    │   ├── UnsafeInput              refused on purpose: a format that names other files, a path escaping
    │   └── LimitExceeded            over a size, pixel, count or length limit
    ├── StoreUnavailable             the object store as a whole: unreachable, credentials, missing bucket
    └── ClusterUnfit                 the Ray cluster can never run what was asked (resources)

``InvalidInput`` is a ``ValueError`` so that callers written against ``ValueError`` keep working. Anything
that is not an ``RsclipError`` is a bug: the CLI and the jobs show its traceback.

:func:`store_fault` is the one place that reads an exception from s3fs/botocore, LanceDB's object store,
pyarrow or GDAL and says whether it is a fault of the store (every request will fail the same way) or of
one object (that object is recorded and skipped).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import quote


class RsclipError(Exception):
    """An expected failure with a message meant for the user."""


class InvalidInput(RsclipError, ValueError):
    """Bad input: an argument, a file, a table content. The message names what was wrong."""


class NotFound(InvalidInput):
    """Something named does not exist (table, tile, model, object, folder)."""


class ModelMismatch(InvalidInput):
    """A model other than the one that embedded the table."""


class UnsafeInput(InvalidInput):
    """Input refused on purpose because opening it could read or run something it should not."""


class LimitExceeded(InvalidInput):
    """Input over one of rsclip's limits (bytes, pixels, patches, characters, rows)."""


class StoreUnavailable(RsclipError):
    """The object store cannot be used at all: unreachable endpoint, rejected credentials, missing bucket."""


class ClusterUnfit(RsclipError):
    """The Ray cluster cannot provide the resources a job asks for, now or after scaling up."""


# Fault kinds, and whether they concern the whole store or one object.
UNREACHABLE, CREDENTIALS, NO_BUCKET, DENIED, MISSING = "unreachable", "credentials", "no_bucket", "denied", "missing"
STORE_WIDE = frozenset({UNREACHABLE, CREDENTIALS, NO_BUCKET})

# Markers in exception type names and texts (s3fs/botocore, object_store in LanceDB, pyarrow, GDAL/curl), in
# the order they are tested: credential errors are also reported as "access denied", so they come first.
# s3fs turns every 403 into a PermissionError carrying only the server's message (no error code), so the
# credential faults are also recognised by the messages S3 (and SeaweedFS/MinIO) send with them.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (UNREACHABLE, ("EndpointConnectionError", "Could not connect to the endpoint", "ConnectTimeoutError",
                   "Connection refused", "ConnectionRefused", "tcp connect error", "dns error",
                   "Name or service not known", "Couldn't connect to server", "Could not resolve host",
                   "Connection timed out", "connect timed out", "Failed to connect")),
    (CREDENTIALS, ("NoCredentialsError", "Unable to locate credentials", "InvalidAccessKeyId",
                   "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "InvalidClientTokenId",
                   "The AWS Access Key Id you provided does not exist", "InvalidSecurity",
                   "no valid credentials", "Failed to get credentials",
                   "you provided does not exist in our records", "signature we calculated does not match",
                   "token has expired", "token is malformed", "security token included in the request is invalid")),
    (NO_BUCKET, ("NoSuchBucket", "bucket does not exist", "The specified bucket does not exist")),
    # one object: no permission on it or on the KMS key that encrypts it, or a local file the process may not read
    (DENIED, ("AccessDenied", "Access Denied", "Forbidden", "KMS.", "KMSAccessDenied", "kms:", "status: 403",
              "HTTP 403", "(403)", "HTTP response code: 403", "Permission denied")),
)

_ADVICE = {
    UNREACHABLE: "cannot reach the object store (check AWS_ENDPOINT_URL and that the server is up)",
    CREDENTIALS: "the object store rejected the credentials (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                 "or the node's role)",
    NO_BUCKET: "the bucket does not exist",
    DENIED: "access denied",
    MISSING: "not found",
}


@dataclass(frozen=True)
class StoreFault:
    """A classified store fault: ``kind`` (one of the constants above) and a short ``advice`` sentence."""

    kind: str
    advice: str

    @property
    def store_wide(self) -> bool:
        """True when every request to the store will fail the same way (stop the job, not one object)."""
        return self.kind in STORE_WIDE


def store_fault(exc: BaseException, ignore: Iterable[str] = ()) -> StoreFault | None:
    """The :class:`StoreFault` an exception reports, or None when it is not an object-store fault.

    ``ignore``: names that messages quote but that are no evidence, such as the failing object's uri (an
    object named ``NoSuchBucket.jpg`` or ``Connection refused.tif`` is not a fault of the store). Each is
    also left out as ``bucket/key`` (how s3fs and GDAL's ``/vsis3/`` quote it) and percent-encoded (curl).
    """
    text = f"{type(exc).__name__} {exc}"
    for name in ignore:
        bare = str(name).split("://", 1)[-1]
        for spelling in sorted({str(name), bare, quote(bare)}, key=len, reverse=True):
            if spelling:
                text = text.replace(spelling, "<name>")
    for kind, markers in _MARKERS:
        if any(marker in text for marker in markers):
            return StoreFault(kind, _ADVICE[kind])
    if isinstance(exc, PermissionError):
        return StoreFault(DENIED, _ADVICE[DENIED])
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return StoreFault(UNREACHABLE, _ADVICE[UNREACHABLE])
    return None


def is_store_wide(exc: BaseException, ignore: Iterable[str] = ()) -> bool:
    """True for faults of the whole store (stop the job), False for anything else (record and skip);
    ``ignore`` as for :func:`store_fault`."""
    fault = store_fault(exc, ignore)
    return fault is not None and fault.store_wide


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type name when blank), cut to ``limit`` characters."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


# Exit status of a command or job that ended with an expected failure (one line on stderr).
EXIT_EXPECTED = 2


def run_reporting(prog: str, work: Callable[[], int | None], *, progress_logs: bool = True) -> int:
    """Run ``work()`` for the command or job ``prog`` and return its exit status.

    An :class:`RsclipError` prints one line ``prog: error: ...`` on stderr and gives :data:`EXIT_EXPECTED`;
    anything else is a bug and propagates with its traceback. A closed pipe (``| head``) ends quietly.
    ``progress_logs`` (jobs) shows rsclip's INFO log lines, e.g. one per table commit.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if progress_logs:
        logging.getLogger("rsclip").setLevel(logging.INFO)
    try:
        status = work()
    except RsclipError as exc:
        print(f"{prog}: error: {one_line(exc, 2000)}", file=sys.stderr, flush=True)
        return EXIT_EXPECTED
    except BrokenPipeError:
        return 0
    return status if isinstance(status, int) else 0


__all__ = [
    "ClusterUnfit", "InvalidInput", "LimitExceeded", "ModelMismatch", "NotFound", "RsclipError", "StoreFault",
    "StoreUnavailable", "UnsafeInput", "is_store_wide", "one_line", "run_reporting", "store_fault",
]
