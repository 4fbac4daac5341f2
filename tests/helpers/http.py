"""A small HTTP file server on 127.0.0.1 for the tests: byte ranges (what GDAL's /vsicurl/ reads COGs with),
a count of the bytes it sent, and redirects on demand."""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from rsclip.runtime.storage import ALLOW_PRIVATE_HTTP

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """Serves the files of ``folder`` at ``http://127.0.0.1:PORT/NAME`` with Range support; ``redirects``
    maps a path to a Location answered with 302. ``sent`` counts the body bytes sent per path."""

    def __init__(self, folder: Path, redirects: dict[str, str] | None = None):
        self.folder, self.redirects, self.sent = Path(folder).resolve(), dict(redirects or {}), {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.end_headers()
                    return
                target = server.folder / path.lstrip("/")
                if not target.is_file() or server.folder not in target.resolve().parents:
                    self.send_error(404)
                    return
                data = target.read_bytes()
                found = _RANGE.match(self.headers.get("Range", ""))
                start, end = (0, len(data) - 1) if not found else (
                    int(found.group(1)), min(int(found.group(2) or len(data) - 1), len(data) - 1))
                self.send_response(206 if found else 200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if found:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(data[start : end + 1])
                    server.sent[path] = server.sent.get(path, 0) + end - start + 1

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RangeServer":
        # a loopback server is a private address: rsclip reads it only when the operator says so
        self._saved = os.environ.get(ALLOW_PRIVATE_HTTP)
        os.environ[ALLOW_PRIVATE_HTTP] = "1"
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._saved is None:
            os.environ.pop(ALLOW_PRIVATE_HTTP, None)
        else:
            os.environ[ALLOW_PRIVATE_HTTP] = self._saved
