"""The HTTP side of a STAC API search: pystac-client's I/O with every request checked and bounded.

:class:`GuardedApiIO` replaces pystac-client's ``StacApiIO`` for one search (one run of the job):

- every request, the landing page's ``search`` link, each ``next`` link and each redirect hop, is checked by
  :func:`rsclip.runtime.hosts.check_url` and kept on the API's own origin (scheme, host, port) unless
  ``other_hosts`` is set (``--stac-other-hosts``); redirects are followed here, one checked hop at a time;
- at most ``max_requests`` requests per run (``--stac-max-requests``), so an API whose pages never end, or
  whose items the search filters all out, stops with :class:`~rsclip.errors.LimitExceeded`;
- a page is read streaming and refused past :data:`MAX_PAGE_BYTES` (decompressed) or :data:`MAX_PAGE_ITEMS`
  items, and must arrive within :data:`PAGE_SECONDS`;
- a ``next`` request asked for twice (a paging loop) ends the search with :class:`~rsclip.errors.InvalidInput`;
- no ``~/.netrc`` credentials are sent (:func:`rsclip.runtime.hosts.session`).
"""

from __future__ import annotations

import json
import time
from copy import deepcopy
from typing import Any, Iterator

from pystac import Link
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO

from rsclip.errors import InvalidInput, LimitExceeded, RsclipError, UnsafeInput
from rsclip.runtime import hosts, storage

# A page of 100 items is a few MB; a document as large as a static catalog's largest is refused.
MAX_PAGE_BYTES = 64 * 1024 * 1024
MAX_PAGE_ITEMS = 1000
DEFAULT_MAX_REQUESTS = 1000
PAGE_SECONDS = 300
METHODS = ("GET", "POST")


class GuardedApiIO(StacApiIO):
    """pystac-client's I/O for the STAC API at ``root``, checked and bounded as the module doc says."""

    def __init__(self, root: str, *, other_hosts: bool = False, max_requests: int = DEFAULT_MAX_REQUESTS,
                 max_bytes: int = MAX_PAGE_BYTES):
        super().__init__(timeout=(storage.CONNECT_TIMEOUT_S, storage.READ_TIMEOUT_S), max_retries=storage.RETRIES)
        adapters = dict(self.session.adapters)
        self.session.close()
        self.session = hosts.session()  # no ~/.netrc; proxies from the environment per request
        for prefix, adapter in adapters.items():
            self.session.mount(prefix, adapter)
        self.root, self.other_hosts = root, other_hosts
        self.max_requests, self.max_bytes, self.requests = max_requests, max_bytes, 0

    def _count(self, url: str) -> None:
        self.requests += 1
        if self.requests > self.max_requests:
            raise LimitExceeded(f"STAC API {self.root}: more than {self.max_requests} requests in one run (at "
                                f"{url[:200]}); narrow the search or raise --stac-max-requests")

    def request(self, href: str, method: str | None = None, headers: dict[str, str] | None = None,
                parameters: dict[str, Any] | None = None) -> str:
        """The text of ``method href`` (module doc); ``APIError`` for a failed request or a non-2xx answer."""
        method = (method or "GET").upper()
        if method not in METHODS:
            raise UnsafeInput(f"STAC API {self.root}: a link asks for {method[:20]!r}; only GET and POST are sent")
        body = {"json": parameters} if method == "POST" else {"params": deepcopy(parameters) or {}}
        same = None if self.other_hosts else self.root
        try:
            response = hosts.follow(self.session, method, href, timeout=self.timeout, same_origin=same,
                                    on_request=self._count, headers=headers, **body)
        except RsclipError:
            raise
        except Exception as err:  # requests' connection errors and timeouts
            raise APIError(str(err)) from None
        with response:
            data = self._read(response, href)
            if not 200 <= response.status_code < 300:
                error = APIError(data[:2000].decode("utf-8", "replace"))
                error.status_code = response.status_code
                raise error
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"STAC API {href[:200]}: the answer is not UTF-8 text") from None

    def _read(self, response, href: str) -> bytes:
        """The body of ``response``, read streaming: refused past ``max_bytes`` or :data:`PAGE_SECONDS`."""
        over = f"STAC API {href[:200]}: an answer of more than {self.max_bytes:,} bytes is not read"
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise LimitExceeded(over)
        data, deadline = bytearray(), time.monotonic() + PAGE_SECONDS
        try:
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > self.max_bytes:
                    raise LimitExceeded(over)
                if time.monotonic() > deadline:
                    raise APIError(f"{href[:200]}: the answer took more than {PAGE_SECONDS} s")
        except (RsclipError, APIError):
            raise
        except Exception as err:  # the connection broke or timed out mid-answer
            raise APIError(str(err)) from None
        return bytes(data)

    def get_pages(self, url: str, method: str | None = None,
                  parameters: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """The pages of a paging endpoint (``/search``), following ``next`` links; a request asked for twice
        raises ``InvalidInput`` (a loop), a page of more than :data:`MAX_PAGE_ITEMS` ``LimitExceeded``."""
        seen: set[str] = set()
        link: dict | None = None
        while True:
            href = link["href"] if link else url
            key = json.dumps([link.get("method", "GET"), href, link.get("body")] if link else
                             [(method or "GET").upper(), url, parameters], sort_keys=True, default=str)
            if key in seen:
                raise InvalidInput(f"STAC API {self.root}: its pages loop ({href[:200]} was asked for twice)")
            seen.add(key)
            page = self.read_json(Link.from_dict(link), parameters=parameters) if link else self.read_json(
                url, method=method, parameters=parameters)
            if not isinstance(page, dict):
                raise InvalidInput(f"STAC API {href[:200]}: a page that is not a JSON object")
            found = page.get("features") or page.get("collections")
            if not found:
                return
            if len(found) > MAX_PAGE_ITEMS:
                raise LimitExceeded(f"STAC API {href[:200]}: a page of {len(found):,} items, more than "
                                    f"{MAX_PAGE_ITEMS:,}")
            yield page
            link = next((k for k in page.get("links") or [] if isinstance(k, dict) and k.get("rel") == "next"), None)
            if link is None:
                return
            if not isinstance(link.get("href"), str):
                raise InvalidInput(f"STAC API {href[:200]}: a next link without an href")
