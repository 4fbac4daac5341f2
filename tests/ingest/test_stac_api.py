"""A hostile STAC API, served for real on 127.0.0.1: paging that loops, next links and redirects to other or
forbidden hosts, pages too large to read, a search whose every item is filtered out, and s3:// assets. Each
must end with a clear error or a bounded stop (pytest-timeout turns a hang into a failure)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from rsclip.errors import InvalidInput, LimitExceeded, UnsafeInput
from rsclip.ingest import stac, stac_io
from rsclip.runtime import hosts

CONFORMS = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
pytestmark = pytest.mark.timeout(120)


def item(number: int, href: str = "https://example.org/a.tif", collection: str = "wanted") -> dict:
    """A minimal STAC item whose ``visual`` asset is ``href``."""
    return {"type": "Feature", "stac_version": "1.0.0", "id": f"item-{number}", "collection": collection,
            "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}, "bbox": [0.0, 0.0, 0.0, 0.0],
            "properties": {"datetime": "2021-01-01T00:00:00Z"}, "links": [],
            "assets": {"visual": {"href": href, "type": "image/tiff; application=geotiff"}}}


class StacApi:
    """A STAC API on 127.0.0.1: its landing page names ``search_path``; every other request is answered by
    ``answer(api, path, page)`` -> (status, headers, body: bytes or an iterable of bytes). ``seen`` lists the
    paths asked for; ``written`` counts the body bytes it managed to send."""

    def __init__(self, answer, search_path: str = "/search"):
        self.answer, self.seen, self.written = answer, [], 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection closes

            def log_message(self, *args):
                pass

            def _serve(self):
                api.seen.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = parse_qs(urlparse(self.path).query)
                page = int(body.get("page") or query.get("page", ["1"])[0])
                path = urlparse(self.path).path
                if path == "/":
                    status, headers, content = 200, {}, json.dumps(api.landing(search_path)).encode()
                else:
                    status, headers, content = api.answer(api, path, page)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(content, bytes):
                    self.send_header("Content-Length", str(len(content)))
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    for chunk in [content] if isinstance(content, bytes) else content:
                        self.wfile.write(chunk)
                        api.written += len(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what we test
                    pass

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def landing(self, search_path: str) -> dict:
        return {"type": "Catalog", "stac_version": "1.0.0", "id": "api", "description": "a test API",
                "conformsTo": CONFORMS, "links": [
                    {"rel": "self", "href": f"{self.url}/"}, {"rel": "root", "href": f"{self.url}/"},
                    *({"rel": "search", "href": f"{self.url}{search_path}", "method": method,
                       "type": "application/geo+json"} for method in ("GET", "POST"))]}

    def __enter__(self) -> "StacApi":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def page(features: list, next_href: str | None = None) -> tuple:
    links = [{"rel": "next", "href": next_href, "method": "GET"}] if next_href else []
    return 200, {}, json.dumps({"type": "FeatureCollection", "features": features, "links": links}).encode()


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    """The API is on loopback: allowed as an operator would allow an on-premises API."""
    monkeypatch.setenv(hosts.ALLOW_PRIVATE_HTTP, "1")


def test_paging_that_loops_ends_with_a_clear_error():
    def answer(api, path, number):
        return page([item(number)], f"{api.url}/search?page=2")  # page 2 names itself as next

    with StacApi(answer) as api:
        with pytest.raises(InvalidInput, match=r"its pages loop \(.*page=2 was asked for twice\)"):
            stac.list_items(stac.StacOptions(stac=api.url))
        assert [p for p in api.seen if "page=2" in p] == ["/search?page=2"]


def test_next_links_stay_on_the_api_host_unless_allowed():
    def answer(api, path, number):
        if path == "/meta":
            return page([item(99)])
        if number == 1:
            return page([item(1)], api.url.replace("127.0.0.1", "localhost") + "/search?page=2")
        return page([item(2)], "http://169.254.169.254/latest/meta-data/" if number == 2 else None)

    with StacApi(answer) as api:
        with pytest.raises(UnsafeInput, match="on another host"):
            stac.list_items(stac.StacOptions(stac=api.url))
        assert not any("page=2" in p for p in api.seen)
        with pytest.raises(UnsafeInput, match="addresses are never read"):  # other hosts, still checked
            stac.list_items(stac.StacOptions(stac=api.url, stac_other_hosts=True))
        assert sum("page=2" in p for p in api.seen) == 1


def test_redirects_of_an_api_are_followed_only_to_allowed_places():
    def answer(api, path, number):
        if path == "/old-search":
            return 308, {"Location": "/search"}, b""
        if path == "/bad-search":
            return 302, {"Location": "http://169.254.169.254/search"}, b""
        return page([item(number)])

    with StacApi(answer, search_path="/old-search") as api:
        assert [s.item_id for s in stac.list_items(stac.StacOptions(stac=api.url))] == ["item-1"]
    with StacApi(answer, search_path="/bad-search") as api:
        with pytest.raises(UnsafeInput, match="addresses are never read"):
            stac.list_items(stac.StacOptions(stac=api.url))


def test_pages_too_large_are_refused_while_streaming():
    cap = stac_io.MAX_PAGE_BYTES

    def endless(api, path, number):
        return 200, {}, (b" " * (1 << 20) for _ in range(4 * cap >> 20))  # 4x the cap, no Content-Length

    with StacApi(endless) as api:
        with pytest.raises(LimitExceeded, match=f"more than {cap:,} bytes is not read"):
            stac.list_items(stac.StacOptions(stac=api.url))
        assert api.written < cap + (32 << 20)  # reading stopped at the cap (plus what socket buffers held)

    def declared(api, path, number):
        return 200, {"Content-Length": str(10 * cap)}, (b" " * (1 << 20) for _ in range(4 * cap >> 20))

    with StacApi(declared) as api:
        with pytest.raises(LimitExceeded, match="is not read"):
            stac.list_items(stac.StacOptions(stac=api.url))
        assert api.written < 32 << 20  # refused on its header, before its body

    def crowded(api, path, number):
        return page([item(i) for i in range(stac_io.MAX_PAGE_ITEMS + 1)])

    with StacApi(crowded) as api:
        with pytest.raises(LimitExceeded, match=f"a page of {stac_io.MAX_PAGE_ITEMS + 1:,} items"):
            stac.list_items(stac.StacOptions(stac=api.url))


def test_a_search_whose_items_are_all_filtered_out_stops_at_the_request_budget():
    def answer(api, path, number):  # the server ignores the search: endless pages of other collections
        return page([item(number, collection="other")], f"{api.url}/search?page={number + 1}")

    with StacApi(answer) as api:
        with pytest.raises(LimitExceeded, match="more than 25 requests in one run"):
            stac.list_items(stac.StacOptions(stac=api.url, collections=("wanted",), stac_max_requests=25))
        assert len(api.seen) == 25  # the landing page and 24 pages, no more
    with pytest.raises(InvalidInput, match="--stac-max-requests"):
        stac.StacOptions(stac="x.json", stac_max_requests=0)


def test_an_api_names_s3_or_local_assets_only_when_allowed():
    hrefs = {1: "s3://any-bucket/secret.tif", 2: "https://example.org/fine.tif", 3: "/etc/passwd.tif"}

    def answer(api, path, number):
        return page([item(i, href) for i, href in hrefs.items()])

    with StacApi(answer) as api:
        listed = {s.item_id: s for s in stac.list_items(stac.StacOptions(stac=api.url))}
        assert "read over http(s) only" in listed["item-1"].problem
        assert listed["item-1"].uri == "stac-item:wanted/item-1"  # the error row names the item
        assert not listed["item-2"].problem and listed["item-2"].uri == hrefs[2]
        assert "s3:// and http(s):// only" in listed["item-3"].problem
        allowed = {s.item_id: s for s in stac.list_items(stac.StacOptions(
            stac=api.url, allow_asset_schemes=("s3", "file")))}
        assert not allowed["item-1"].problem and allowed["item-1"].uri == hrefs[1]
        assert allowed["item-3"].problem  # an API never names local files, whatever is allowed
    with pytest.raises(InvalidInput, match="--allow-asset-schemes"):
        stac.StacOptions(stac="x.json", allow_asset_schemes=("ftp",))
