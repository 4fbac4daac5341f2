"""What one API service serves, how it is exposed and its limits (:class:`ApiConfig`), and where its token
comes from (:func:`read_token`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rsclip.app.server import LOOPBACK_NAMES, MAX_UPLOAD_MB
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.table import names

DEFAULT_PORT = 8600
TOKEN_ENV = "RSCLIP_API_TOKEN"
MIN_TOKEN_CHARS = 16
# How a service of several processes passes its arguments (never the token) to the processes uvicorn starts.
ARGUMENTS_ENV = "RSCLIP_API_ARGUMENTS"
MAX_PROCESSES = 32
MAX_TOKEN_FILE_BYTES = 4096
# A JSON body: an image upload (MAX_UPLOAD_MB, base64 in JSON: 4/3 of it) and some room for the fields.
MAX_BODY_BYTES = MAX_UPLOAD_MB * 1024 * 1024 * 4 // 3 + 64 * 1024
# Bodies above this many bytes (or of unknown length) take one of LARGE_BODY_SLOTS while they are read, so a
# burst of uploads holds at most LARGE_BODY_SLOTS x MAX_BODY_BYTES in memory.
SMALL_BODY_BYTES = 256 * 1024
LARGE_BODY_SLOTS = 4
# Seconds a client has to send its whole body; a slower one gets 408 and holds nothing.
BODY_TIMEOUT_S = 30.0
MAX_VECTOR_VALUES = 4096
MAX_EXAMPLES = 1000
# OGC API - Features paging (the `limit` parameter): default and largest page.
DEFAULT_PAGE = 100
MAX_PAGE = 10_000
# Features in one export answer (POST /api/export): ~40 MB of GeoJSON.
MAX_EXPORT_FEATURES = 100_000
FEATURES_HEADER = "X-Rsclip-Features"  # how many features an export answer's file holds
DEFAULT_MIN_SCORE = 0.5


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable from this machine only."""
    return host in LOOPBACK_NAMES or host.startswith("127.")


@dataclass(frozen=True)
class ApiConfig:
    """A service over table ``table`` of database ``db``: bound to ``host:port``; ``token`` (None: no token asked,
    loopback only); ``workers`` searches at once and ``queue`` more waiting (beyond: 503); ``min_score``: the
    score threshold of the detections collections; ``cors_origins``: browser origins allowed (none: CORS off);
    ``allowed_hosts``: Host names accepted besides the loopback names; ``resident_max_gb``: the largest resident
    copy kept in memory (None: rsclip.search.memory_table's default); ``processes``: service processes sharing
    the port, each with its own model, resident copy, ``workers`` and ``queue`` (searches on that many cores at
    once: Python runs one search's own work at a time per process)."""

    db: str
    table: str = names.DEFAULT_TABLE
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = field(default=None, repr=False)
    workers: int = 2
    queue: int = 16
    min_score: float = DEFAULT_MIN_SCORE
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    resident_max_gb: float | None = None
    processes: int = 1

    def __post_init__(self):
        if not is_loopback(self.host) and not self.token:
            raise InvalidInput(f"binding {self.host} exposes the service beyond this machine: give a token "
                               f"(--token-file FILE or {TOKEN_ENV})")
        if not 1 <= self.workers <= 64 or not 0 <= self.queue <= 1024:
            raise InvalidInput("workers must be in [1, 64] and queue in [0, 1024]")
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise InvalidInput(f"processes must be in [1, {MAX_PROCESSES}], got {self.processes}")
        if not 0.0 <= self.min_score <= 1.0:
            raise InvalidInput(f"min score must be in [0, 1], got {self.min_score!r}")

    @property
    def hosts(self) -> tuple[str, ...]:
        """Host names requests may carry: loopback names for a loopback bind (against DNS rebinding) plus
        ``allowed_hosts``; any for another bind when none are given."""
        if is_loopback(self.host):
            return tuple(dict.fromkeys([*LOOPBACK_NAMES, *self.allowed_hosts]))
        return self.allowed_hosts or ("*",)


def read_token(path: str | None) -> str | None:
    """The service's bearer token: the first line of ``path`` (at most 4 KB), else :data:`TOKEN_ENV`, else
    None. Raises ``InvalidInput`` for a missing file or a token shorter than :data:`MIN_TOKEN_CHARS` (the
    message never shows the token)."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise InvalidInput(f"token file {path} not found")
        if file.stat().st_size > MAX_TOKEN_FILE_BYTES:
            raise LimitExceeded(f"token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
        lines = file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        token = lines[0].strip() if lines else ""
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
        if token is None:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidInput(f"the API token must have at least {MIN_TOKEN_CHARS} characters")
    return token


def add_arguments(parser) -> None:
    """The options of ``rsclip api`` (and of ``python -m rsclip.app.api``, which it runs)."""
    parser.add_argument("db", metavar="DB", help="database: the folder (local path or s3:// URI) of the tile table")
    parser.add_argument("--table", default=names.DEFAULT_TABLE, help="tile table in DB (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; any other "
                                                            "needs a token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument("--token-file", help=f"file whose first line is the bearer token clients must send "
                                             f"(else ${TOKEN_ENV}; required off loopback)")
    parser.add_argument("--workers", type=int, default=2, help="searches at once (default: %(default)s)")
    parser.add_argument("--queue", type=int, default=16, help="requests waiting beyond those; more get 503 "
                                                              "(default: %(default)s)")
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE,
                        help="score threshold of the detections collections (default: %(default)s)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="a browser origin allowed to call the API (CORS is off without one)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host name accepted besides the loopback names (behind a proxy)")
    parser.add_argument("--resident-max-gb", type=float, help="largest resident copy of the table kept in memory")
    parser.add_argument("--processes", type=int, default=1,
                        help="service processes sharing the port, each holding its own model and resident copy "
                             "(memory x N) and its own --workers and --queue (default: %(default)s)")


def config_of(args) -> ApiConfig:
    """The :class:`ApiConfig` of parsed ``rsclip api`` arguments (the token read by :func:`read_token`)."""
    return ApiConfig(db=args.db, table=args.table, host=args.host, port=args.port, token=read_token(args.token_file),
                     workers=args.workers, queue=args.queue, min_score=args.min_score,
                     cors_origins=tuple(args.cors_origin), allowed_hosts=tuple(args.allowed_host),
                     resident_max_gb=args.resident_max_gb, processes=args.processes)


def arguments(config: ApiConfig) -> list[str]:
    """``config`` as the arguments of ``python -m rsclip.app.api`` (the token travels in :data:`TOKEN_ENV`,
    never on a command line other processes can read)."""
    words = [config.db, "--table", config.table, "--host", config.host, "--port", str(config.port),
             "--workers", str(config.workers), "--queue", str(config.queue), "--min-score", repr(config.min_score),
             "--processes", str(config.processes)]
    words += [w for origin in config.cors_origins for w in ("--cors-origin", origin)]
    words += [w for host in config.allowed_hosts for w in ("--allowed-host", host)]
    if config.resident_max_gb is not None:
        words += ["--resident-max-gb", repr(config.resident_max_gb)]
    return words
