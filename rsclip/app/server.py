"""The web app: search a tile table by text, image or examples, see the hits on a map, label them, run and
review detections, download GeoJSON/GeoParquet; in Streamlit.

:func:`serve` runs ``streamlit run`` on :data:`APP_SCRIPT` (the page, ``rsclip/app/page.py``) with
settings that keep the app local and offline: bound to 127.0.0.1 unless told otherwise, usage statistics
off, no file watcher, no developer toolbar, and error details hidden from the browser (Streamlit serves
its own fonts and scripts, the map's Leaflet is served from the package: nothing is fetched from a CDN, and
no basemap unless ``--basemap`` names one).

The views (their modules say more):

1. **Text search** (:mod:`rsclip.app.search_views`): a text query ranks the table's tiles. The hits' true
   WGS84 footprints are drawn on a map coloured by score, with thumbnails when zoomed in; a click opens a
   tile's panel (large preview, bounds, "Similar tiles", label buttons) (:mod:`rsclip.app.mapview`,
   :mod:`rsclip.app.results`). Below, a card per hit: its preview cut from the source object by the tile
   window, score, window, bounds, "Similar tiles", "+" and "-". Tables without bounds get the cards alone.
2. **Image search**: an uploaded image, or the "Similar tiles" button of any hit, ranks tiles by image
   similarity (a clicked tile is searched by its stored embedding and left out of its own results).
3. **Labels**: the label set chosen or named in the sidebar (:mod:`rsclip.app.labelling`), its tiles, and
   "Find more like these" (the example search of its positives and negatives).
4. **Detections** (:mod:`rsclip.app.detect_view`): run the detector for the label set in the background
   (:mod:`rsclip.app.detection_runs`) and review its detections above a threshold, best first.
5. **Changes** (:mod:`rsclip.app.changes_view`): two dates; the places whose embedding moved most between
   them, on the map coloured by change (``rsclip.changes``).
6. **Feature finder** (:mod:`rsclip.app.feature_view`): an uploaded image is cut into a patch grid and each
   patch scored against a typed feature; the grid of probabilities and a heatmap overlay are shown.

Where and when to search (sidebar, every view): a typed bounding box and/or an area drawn on any map; a
date range and, where the table records them, cloud cover and nodata limits (:mod:`rsclip.app.date_filter`).
A tile opened on a map shows its timeline: the tiles of its place by date with their similarity
(:mod:`rsclip.app.timeline_view`). Results, labels, detections and changes download as GeoJSON or
GeoParquet (:mod:`rsclip.app.downloads`).

Searches run on a resident copy of the table (``query(..., resident=True)``, :mod:`rsclip.resident`): the
server is long-lived, so it loads the table version once (~2.2 KB of memory per 512-d row) and answers each
query from memory plus the index's candidate row ids.

What a visitor sends is bounded and never read as a path: typed text is encoded as text
(``rsclip.search.query.Text``: ``file:///...`` or ``s3://...`` typed in a box is words), at most
``MAX_TEXT_CHARS``; uploads are opened only as the format their name claims, within the limits of
:mod:`rsclip.app.preview`; the bounding box is parsed into four floats and checked by
:func:`rsclip.query.validate_bbox`; an area drawn on the map is bounded and validated as a WGS84 polygon
(:mod:`rsclip.app.mapdata`); typed dates are ISO dates of at most ten characters, checked before use
(:mod:`rsclip.app.timedata`); a typed label-set name must match the labels module's pattern; detection runs
and downloads are bounded. No SQL is built here from anything a visitor sends: searches take validated
filters, tile ids are checked against :data:`TILE_ID_PATTERN`. Object names, table values, upload names and
messages are shown as plain text (:func:`escape_markdown`; on the map, ``textContent``): nothing in them
makes a browser fetch or render.
"""

from __future__ import annotations

import os
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

import numpy as np

from rsclip import errors
from rsclip.app.preview import MAX_UPLOAD_MB
from rsclip.table import tiles
from rsclip.search.filters import BBox, validate_bbox

APP_SCRIPT = Path(__file__).with_name("page.py")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
DEFAULT_K = 12
MAX_K = 100
PREVIEW_SIZE = 256
GRID_COLUMNS = 4
MAX_MESSAGE_CHARS = 300
# Longest bounding box text accepted (four numbers need a few dozen characters).
MAX_BBOX_CHARS = 200
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

# Feature finder: the default and largest patch grid.
DEFAULT_GRID = (3, 3)
MAX_GRID = 16


@dataclass(frozen=True)
class WebConfig:
    """What the app serves: the table ``table`` of the LanceDB database ``db`` (local path or ``s3://``);
    ``basemap``: an XYZ tile URL template under the map (None: no basemap, nothing fetched); ``ray_address``:
    the Ray cluster detection runs use (None: a private local instance per run)."""

    db: str
    table: str = tiles.DEFAULT_TABLE
    basemap: str | None = None
    ray_address: str | None = None

    def arguments(self) -> list[str]:
        """The page's command-line arguments (after ``--``) for this configuration."""
        words = ["--db", str(self.db), "--table", self.table]
        if self.basemap:
            words += ["--basemap", self.basemap]
        if self.ray_address:
            words += ["--ray-address", self.ray_address]
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
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)


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
    upload cap of :data:`rsclip.app.preview.MAX_UPLOAD_MB`, no agent API, error details hidden, and the
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
    table: str = tiles.DEFAULT_TABLE,
    port: int = DEFAULT_PORT,
    env: Mapping[str, str] | None = None,
    program: str = "rsclip",
) -> str:
    """What to tell a user (``make demo``'s last words): the shell command that serves ``table`` of ``db``
    and the URL to open. ``env`` (e.g. a local S3 server's AWS variables) is prefixed to the command."""
    words = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    words += [program, "serve", shlex.quote(str(db))]
    if table != tiles.DEFAULT_TABLE:
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
    table: str = tiles.DEFAULT_TABLE,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    block: bool = True,
    hosts: Sequence[str] = (),
    basemap: str | None = None,
    ray_address: str | None = None,
) -> int | WebServer:
    """Serve the web demo for ``table`` in ``db`` (local path or ``s3://`` URI) on ``http://host:port/``.

    Binds 127.0.0.1 unless another ``host`` is given; ``hosts`` are further Host names browsers may use
    (a proxy's public name, see :func:`allowed_hosts`). ``basemap`` is an XYZ URL template
    (``https://host/{z}/{x}/{y}.png``) drawn under the map; without it the page fetches nothing but the app
    itself. ``ray_address`` is the cluster detection runs use (default: a private local Ray per run).
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
    config = WebConfig(db=str(db), table=table, basemap=validate_basemap(basemap), ray_address=ray_address)
    cmd = streamlit_command(config, host, port, hosts)
    url = app_url(host, port)
    if block:
        print(f"rsclip web demo for table {table!r} in {db}: open {url}", flush=True)
        proc = subprocess.Popen(cmd)
        # `kill <pid>` of this process must not leave the server running: pass SIGTERM on.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return proc.wait()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
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


def parse_bbox(text: str | None) -> BBox | None:
    """A bounding box typed as ``lon_min, lat_min, lon_max, lat_max`` (commas and/or spaces); None when blank.

    Raises ``ValueError`` with a readable message for anything else (see ``rsclip.query.validate_bbox``).
    """
    if text is None or not text.strip():
        return None
    if len(text) > MAX_BBOX_CHARS:
        raise errors.LimitExceeded(f"bounding box text is {len(text):,} characters long, more than the limit of "
                                   f"{MAX_BBOX_CHARS}")
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if len(parts) != 4:
        raise ValueError(
            f"bounding box needs four numbers lon_min, lat_min, lon_max, lat_max; got {len(parts)} value(s)"
        )
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"bounding box values must be numbers, got {text.strip()!r}") from None
    return validate_bbox(numbers)


def describe_bounds(row) -> str:
    """``lon/lat`` bounds of a hit as text, or a note that the tile has no georeference."""
    values = [row[c] for c in tiles.BOUNDS_COLUMNS]
    if any(v is None or not np.isfinite(v) for v in values):
        return "no georeference"
    lon_min, lat_min, lon_max, lat_max = values
    return f"lon {lon_min:.4f} to {lon_max:.4f}, lat {lat_min:.4f} to {lat_max:.4f}"


def describe_window(row) -> str:
    """The tile window of a hit as text."""
    return f"x={int(row[tiles.X])} y={int(row[tiles.Y])} {int(row[tiles.WIDTH])}x{int(row[tiles.HEIGHT])} px"


def source_name(uri: str) -> str:
    """The last path component of a source URI (full URI in the tooltip)."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


# ASCII punctuation: each can start markdown (links, images, HTML, emphasis, colour and icon directives, math).
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def escape_markdown(text) -> str:
    """``text`` as Streamlit markdown that shows it as is: every ASCII punctuation mark backslash-escaped and
    line breaks made spaces, so an object name, a table value or an upload name renders no image, link,
    HTML, directive or formula. Every such value goes through here before ``st.markdown``/``caption``/
    ``error``/``help``."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(text).splitlines()))


def readable_error(exc: BaseException) -> str:
    """A one-line message for the page.

    Object-store faults (which LanceDB reports as long debug dumps) become a short sentence naming the
    cause; other errors keep their first line, cut to :data:`MAX_MESSAGE_CHARS` (ValueError text as is,
    anything else prefixed with its type name).
    """
    fault = errors.store_fault(exc)
    if fault is not None and not isinstance(exc, errors.RsclipError):
        return fault.advice
    first = errors.one_line(exc, MAX_MESSAGE_CHARS)
    return first if isinstance(exc, ValueError) else f"{type(exc).__name__}: {first}"
