"""Which outbound URLs rsclip fetches (rsclip.runtime.hosts): forbidden addresses, names that do not resolve,
a proxy the operator allows, and redirects checked hop by hop, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rsclip.errors import LimitExceeded, UnsafeInput
from rsclip.runtime import hosts, storage

UNRESOLVABLE = "http://cog.rsclip.invalid/a.tif"  # .invalid never resolves (RFC 2606)


class Server:
    """An HTTP server on 127.0.0.1 answering each path from ``routes`` (path -> (status, Location or None));
    ``seen`` lists the request lines it got, in order (a proxy sees absolute URLs there)."""

    def __init__(self, routes: dict[str, tuple[int, str | None]]):
        self.routes, self.seen = routes, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                server.seen.append(f"{self.command} {self.path}")
                status, location = server.routes.get(self.path.split("?", 1)[0], (404, None))
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "Server":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def clean_env(monkeypatch):
    """No proxy, no private networks, no proxy permission: the defaults, whatever this host's environment."""
    for name in (*hosts.PROXY_VARIABLES, "NO_PROXY", "no_proxy", hosts.ALLOW_PROXY, hosts.ALLOW_PRIVATE_HTTP):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
                                 "http://2852039166/x.tif", "http://metadata.google.internal./x",
                                 "http://0.0.0.0:8080/", "http://224.0.0.1/", "http://[fe80::1]/"])
def test_metadata_and_link_local_addresses_are_never_fetched(url, clean_env):
    clean_env.setenv(hosts.ALLOW_PRIVATE_HTTP, "1")
    with pytest.raises(UnsafeInput, match="addresses are never read"):
        hosts.check_url(url)


def test_schemes_and_malformed_urls_are_refused(clean_env):
    for url in ("file:///etc/passwd", "ftp://example.org/a.tif", "gopher://x/", "s3://bucket/key", "//host/a"):
        with pytest.raises(UnsafeInput, match="scheme is disabled"):
            hosts.check_url(url)
    for url in ("http:///a.tif", "http://exa mple.org/a", "http://example.org/a\nb"):
        with pytest.raises(UnsafeInput, match="no host, or spaces"):
            hosts.check_url(url)
    with pytest.raises(UnsafeInput, match="addresses are never read"):
        hosts.check_url("http://127.0.0.1:9/")  # loopback: only when the operator allows private networks
    clean_env.setenv(hosts.ALLOW_PRIVATE_HTTP, "1")
    assert hosts.check_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/"


def test_a_name_that_does_not_resolve_is_fetched_only_through_an_allowed_proxy(clean_env):
    with pytest.raises(UnsafeInput, match="does not resolve here"):
        hosts.check_url(UNRESOLVABLE)
    clean_env.setenv(hosts.ALLOW_PROXY, "1")  # allowed, but no proxy configured: nothing could resolve it
    with pytest.raises(UnsafeInput, match="does not resolve here"):
        hosts.check_url(UNRESOLVABLE)
    clean_env.delenv(hosts.ALLOW_PROXY)
    with Server({"/a.tif": (200, None)}) as proxy:
        clean_env.setenv("HTTP_PROXY", proxy.url)  # a proxy alone is not permission
        with pytest.raises(UnsafeInput, match="does not resolve here"):
            storage.gdal_path(UNRESOLVABLE)
        assert proxy.seen == []
        clean_env.setenv(hosts.ALLOW_PROXY, "1")
        assert storage.gdal_path(UNRESOLVABLE) == f"/vsicurl/{UNRESOLVABLE}"
        assert proxy.seen == [f"HEAD {UNRESOLVABLE}"]  # the redirect check went through the proxy


def test_redirects_are_checked_at_every_hop_and_gdal_gets_the_last_url(clean_env):
    clean_env.setenv(hosts.ALLOW_PRIVATE_HTTP, "1")  # the test server is on loopback
    routes = {"/a.tif": (302, "/b.tif"), "/b.tif": (301, "/c.tif"), "/c.tif": (200, None),
              "/meta.tif": (302, "http://169.254.169.254/latest/meta-data/iam/x.tif"),
              "/mapped.tif": (307, "http://[::ffff:a9fe:a9fe]/x.tif"),
              "/name.tif": (302, "http://metadata.google.internal/x.tif"),
              "/file.tif": (302, "file:///etc/passwd"), "/nowhere.tif": (302, UNRESOLVABLE),
              "/loop.tif": (302, "/loop.tif"), "/head.tif": (405, None)}
    with Server(routes) as server:
        routes["/far.tif"] = (302, "/a.tif")  # a hop more than /a.tif: still within the limit
        assert storage.gdal_path(f"{server.url}/far.tif") == f"/vsicurl/{server.url}/c.tif"
        assert server.seen == ["HEAD /far.tif", "HEAD /a.tif", "HEAD /b.tif", "HEAD /c.tif"]
        for path in ("/meta.tif", "/mapped.tif", "/name.tif"):
            with pytest.raises(UnsafeInput, match="addresses are never read"):
                storage.gdal_path(f"{server.url}{path}")
        with pytest.raises(UnsafeInput, match="scheme is disabled"):
            storage.gdal_path(f"{server.url}/file.tif")
        with pytest.raises(UnsafeInput, match="does not resolve"):
            storage.gdal_path(f"{server.url}/nowhere.tif")
        server.seen.clear()
        with pytest.raises(LimitExceeded, match=f"more than {hosts.MAX_REDIRECTS} redirects"):
            storage.gdal_path(f"{server.url}/loop.tif")
        assert len(server.seen) == hosts.MAX_REDIRECTS + 1
        server.seen.clear()
        assert storage.gdal_path(f"{server.url}/head.tif") == f"/vsicurl/{server.url}/head.tif"
        assert server.seen == ["HEAD /head.tif", "GET /head.tif"]  # HEAD refused: a one-byte GET instead
    # nothing listens any more: the checked URL is handed on, and GDAL's own read reports the failure
    assert storage.gdal_path(f"{server.url}/a.tif") == f"/vsicurl/{server.url}/a.tif"


def test_the_same_origin_rule_and_the_request_budget_hold_on_every_hop(clean_env):
    clean_env.setenv(hosts.ALLOW_PRIVATE_HTTP, "1")
    routes = {"/here": (302, "/there"), "/there": (200, None)}
    with Server(routes) as server:
        other = server.url.replace("127.0.0.1", "localhost")
        routes["/away"] = (302, f"{other}/there")
        http, counted = hosts.session(), []
        with hosts.follow(http, "GET", f"{server.url}/here", timeout=5, same_origin=server.url,
                          on_request=counted.append) as response:
            assert response.status_code == 200 and counted == [f"{server.url}/here", f"{server.url}/there"]
        with pytest.raises(UnsafeInput, match="on another host"):
            hosts.follow(http, "GET", f"{server.url}/away", timeout=5, same_origin=server.url)
        assert server.seen[-1] == "GET /away"  # the other host was never asked
        with hosts.follow(http, "GET", f"{server.url}/away", timeout=5) as response:
            assert response.status_code == 200 and response.url == f"{other}/there"
