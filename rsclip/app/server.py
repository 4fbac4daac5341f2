"""Starting the web app: :func:`serve` runs ``streamlit run`` on :data:`APP_SCRIPT` (the page,
``rsclip/app/web/page.py``) with settings that keep the app local and offline: bound to 127.0.0.1 unless told
otherwise, usage statistics off, no file watcher, no developer toolbar, and error details hidden from the
browser (Streamlit serves its own fonts and scripts, the map's Leaflet is served from the package: nothing is
fetched from a CDN, and no basemap unless ``--basemap`` names one).

``rsclip serve`` (:mod:`rsclip.app.cli.serve`), the tests and ``infra/demo.py`` start the app through this
module, which sits beside the two applications and imports neither: Streamlit runs the page as a script in its
own process, named here by its file, so neither the command line nor this module imports the web app (or
Streamlit). The page itself is described in :mod:`rsclip.app.web`.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

from rsclip import errors
from rsclip.app.processes import stop_process_group
from rsclip.table import names

# The page Streamlit runs as a script (a file, not an import: see the module).
APP_SCRIPT = Path(__file__).parent / "web" / "page.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
# Uploads (a query image, or one scene for the feature finder; archives are embedded by the job). The one size
# limit: Streamlit's server.maxUploadSize is set from it, rsclip.app.web.data.uploads checks the bytes.
MAX_UPLOAD_MB = 32
# Largest WebSocket message either side may send (widget values in, page elements out; images and uploads go
# over HTTP): Streamlit's default of 200 MB would let one visitor send 200 MB of "typed text".
MAX_MESSAGE_MB = 16
# Host names a browser may reach a loopback-bound server by: a page from elsewhere whose name resolves to
# 127.0.0.1 (DNS rebinding) is refused. A proxy passing its own Host header needs `--allowed-host NAME`.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# An XYZ basemap template (`rsclip serve --basemap`): http(s), the {z}, {x} and {y} placeholders, nothing that
# could leave the URL (quotes, spaces, angle brackets), of bounded length.
MAX_BASEMAP_CHARS = 500
BASEMAP_PATTERN = re.compile(r"https?://[^\s\"'<>`\\]+")
# Seconds serve(block=False) waits for the server to answer its health check.
START_TIMEOUT_S = 60.0
MAX_RESIDENT_GB = 4096  # rsclip serve --resident-max-gb: at most this many GB


@dataclass(frozen=True)
class WebConfig:
    """What the app serves: the table ``table`` of the LanceDB database ``db`` (local path or ``s3://``);
    ``basemap``: an XYZ tile URL template under the map (None: no basemap, nothing fetched); ``ray_address``:
    the Ray cluster detection runs use (None: a private local instance per run); ``resident_max_gb``: the
    largest resident copy of the table searches keep in memory (None: rsclip.search.memory_table's default)."""

    db: str
    table: str = names.DEFAULT_TABLE
    basemap: str | None = None
    ray_address: str | None = None
    resident_max_gb: float | None = None

    def arguments(self) -> list[str]:
        """The page's command-line arguments (after ``--``) for this configuration."""
        words = ["--db", str(self.db), "--table", self.table]
        if self.basemap:
            words += ["--basemap", self.basemap]
        if self.ray_address:
            words += ["--ray-address", self.ray_address]
        if self.resident_max_gb is not None:
            words += ["--resident-max-gb", repr(float(self.resident_max_gb))]
        return words


@dataclass
class WebServer:
    """A demo server started with ``serve(..., block=False)``: its URL and process; :meth:`stop` ends it."""

    url: str
    process: subprocess.Popen
    log: IO[bytes] | None = None

    def output(self) -> str:
        """What the server has printed so far (its log)."""
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (its whole process group) and wait for it."""
        stop_process_group(self.process, timeout)


def app_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server bound to ``host:port``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}/"


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names the server accepts: the loopback names (and ``extra``) for a loopback-bound server;
    for one bound elsewhere ``extra`` alone, where empty means any (the operator chose to expose it)."""
    loopback = host in LOOPBACK_NAMES or host.startswith("127.")
    return tuple(dict.fromkeys([*(LOOPBACK_NAMES if loopback else ()), *extra]))


def streamlit_command(config: WebConfig, host: str, port: int, hosts: Sequence[str] = ()) -> list[str]:
    """The ``python -m streamlit run`` command line serving ``config`` on ``host:port``.

    Hardening kept explicit rather than left to Streamlit's defaults: XSRF protection and CORS on, the
    upload cap of :data:`MAX_UPLOAD_MB`, no agent API, error details hidden, and the
    Host names of :func:`allowed_hosts` (``hosts`` added).
    """
    flags = {
        "server.address": host,
        "server.port": str(port),
        "server.headless": "true",
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "server.maxUploadSize": str(MAX_UPLOAD_MB),
        "server.maxMessageSize": str(MAX_MESSAGE_MB),
        "server.enableXsrfProtection": "true",
        "server.enableCORS": "true",
        "server.enableAgentApi": "false",
        "server.allowedHosts": allowed_hosts(host, hosts),
        "browser.gatherUsageStats": "false",
        "browser.serverAddress": host if host not in ("0.0.0.0", "::", "") else "127.0.0.1",
        "client.showErrorDetails": "none",
        "client.toolbarMode": "minimal",
        "global.developmentMode": "false",
        "theme.base": "light",
    }
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT)]
    for name, value in flags.items():
        cmd += [f"--{name}={v}" for v in value] if isinstance(value, tuple) else [f"--{name}={value}"]
    return [*cmd, "--", *config.arguments()]


def open_instructions(
    db,
    *,
    table: str = names.DEFAULT_TABLE,
    port: int = DEFAULT_PORT,
    env: Mapping[str, str] | None = None,
    program: str = "rsclip",
) -> str:
    """What to tell a user (``make demo``'s last words): the shell command that serves ``table`` of ``db``
    and the URL to open. ``env`` (e.g. a local S3 server's AWS variables) is prefixed to the command."""
    words = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    words += [program, "serve", shlex.quote(str(db))]
    if table != names.DEFAULT_TABLE:
        words += ["--table", shlex.quote(table)]
    if port != DEFAULT_PORT:
        words += ["--port", str(port)]
    return f"Web demo: run\n  {' '.join(words)}\nthen open {app_url(DEFAULT_HOST, port)} in a browser."


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "_stcore/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def serve(
    db,
    *,
    table: str = names.DEFAULT_TABLE,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    block: bool = True,
    hosts: Sequence[str] = (),
    basemap: str | None = None,
    ray_address: str | None = None,
    resident_max_gb: float | None = None,
) -> int | WebServer:
    """Serve the web demo for ``table`` in ``db`` (local path or ``s3://`` URI) on ``http://host:port/``.

    Binds 127.0.0.1 unless another ``host`` is given; ``hosts`` are further Host names browsers may use
    (a proxy's public name, see :func:`allowed_hosts`). ``basemap`` is an XYZ URL template
    (``https://host/{z}/{x}/{y}.png``) drawn under the map; without it the page fetches nothing but the app
    itself. ``ray_address`` is the cluster detection runs use (default: a private local Ray per run).
    ``resident_max_gb`` caps the table's resident copy (:func:`validate_resident_gb`; larger tables are
    searched compact, then through Lance).
    With ``block`` (the CLI) runs until the server exits
    and returns its exit code; otherwise returns a :class:`WebServer` once the server answers its health
    check. Raises ``ValueError`` for a port outside [1, 65535] and ``RuntimeError`` when the server exits or
    does not come up within :data:`START_TIMEOUT_S`, ``InvalidInput`` for a malformed ``basemap``. The
    table is opened by the app: an unknown or unreachable table is reported on the page.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer in [1, 65535], got {port!r}")
    if not str(table).strip():
        raise ValueError("table name is empty")
    config = WebConfig(db=str(db), table=table, basemap=validate_basemap(basemap), ray_address=ray_address,
                       resident_max_gb=validate_resident_gb(resident_max_gb))
    cmd = streamlit_command(config, host, port, hosts)
    url = app_url(host, port)
    if block:
        print(f"rsclip web demo for table {table!r} in {db}: open {url}", flush=True)
        return run_until_exit(cmd)
    return start(cmd, url)


def run_until_exit(cmd: list[str]) -> int:
    """Run the server ``cmd`` in the foreground; its exit code. ``kill <pid>`` of this process and Ctrl-C
    end the server too."""
    proc = subprocess.Popen(cmd)
    previous = None
    if threading.current_thread() is threading.main_thread():  # pass SIGTERM on
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def start(cmd: list[str], url: str) -> WebServer:
    """Start the server ``cmd`` in the background; returns once ``url`` answers its health check."""
    # the server's output goes to a file, not a pipe: a pipe nobody reads would stop the server once full
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = WebServer(url=url, process=proc, log=log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the web demo exited with code {proc.returncode}:\n{server.output()[-3000:]}")
        if _healthy(url):
            return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"the web demo did not answer at {url} within {START_TIMEOUT_S:.0f}s")


def validate_resident_gb(value) -> float | None:
    """``value`` (GB, None for the default) as a resident-copy cap; ``InvalidInput`` outside (0, 4096]."""
    if value is None:
        return None
    try:
        gb = float(value)
    except (TypeError, ValueError):
        raise errors.InvalidInput(f"resident memory limit must be a number of GB, got {value!r}") from None
    if not 0 < gb <= MAX_RESIDENT_GB:
        raise errors.InvalidInput(f"resident memory limit must be in (0, {MAX_RESIDENT_GB}] GB, got {value!r}")
    return gb


def validate_basemap(template: str | None) -> str | None:
    """``template`` as an XYZ tile URL template (``https://host/{z}/{x}/{y}.png``, optionally ``{s}``), or
    None when not given. Raises ``InvalidInput`` naming what is wrong otherwise."""
    if template is None or not str(template).strip():
        return None
    text = str(template).strip()
    if len(text) > MAX_BASEMAP_CHARS:
        raise errors.InvalidInput(f"basemap URL template is longer than {MAX_BASEMAP_CHARS} characters")
    if not BASEMAP_PATTERN.fullmatch(text):
        raise errors.InvalidInput(f"basemap must be an http(s) URL template without spaces or quotes, got {text!r}")
    missing = [p for p in ("{z}", "{x}", "{y}") if p not in text]
    if missing:
        raise errors.InvalidInput(f"basemap URL template lacks {', '.join(missing)}: e.g. "
                                  "https://tiles.example.org/{z}/{x}/{y}.png")
    return text

