"""The one classifier of object-store faults: whether an exception from s3fs/botocore, LanceDB's object
store, pyarrow or GDAL is a fault of the whole store (every request will fail the same way: stop) or of one
object (record it and skip)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote

# Fault kinds, and whether they concern the whole store or one object.
UNREACHABLE, CREDENTIALS, NO_BUCKET, DENIED, MISSING = "unreachable", "credentials", "no_bucket", "denied", "missing"
NO_CREDENTIALS = "no_credentials"  # none found at all (no variables, profile or role): nothing was sent to reject
STORE_WIDE = frozenset({UNREACHABLE, CREDENTIALS, NO_CREDENTIALS, NO_BUCKET})

# Markers in exception type names and texts (s3fs/botocore, object_store in LanceDB, pyarrow, GDAL/curl), in
# the order they are tested: credential errors are also reported as "access denied", so they come first.
# s3fs turns every 403 into a PermissionError carrying only the server's message (no error code), so the
# credential faults are also recognised by the messages S3 (and SeaweedFS/MinIO) send with them.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (UNREACHABLE, ("EndpointConnectionError", "Could not connect to the endpoint", "ConnectTimeoutError",
                   "Connection refused", "ConnectionRefused", "tcp connect error", "dns error",
                   "Name or service not known", "Couldn't connect to server", "Could not resolve host",
                   "Connection timed out", "connect timed out", "Failed to connect")),
    (NO_CREDENTIALS, ("NoCredentialsError", "Unable to locate credentials",
                      "AWS_NO_SIGN_REQUEST configuration options not defined")),  # the last: GDAL's /vsis3/
    (CREDENTIALS, ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                   "InvalidClientTokenId",
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
    NO_CREDENTIALS: "no credentials for the object store were found (set AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY, a profile or the node's role, and AWS_ENDPOINT_URL for a store other "
                    "than AWS)",
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
