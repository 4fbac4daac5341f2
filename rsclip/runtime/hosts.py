"""Which outbound URLs rsclip may fetch, in one place: rasters (GDAL), STAC APIs and anything added later.

Every URL a table, a catalog or a user names is hostile. :func:`check_url` decides, before any connection:
the scheme is ``http``/``https``; the URL has a host and no spaces or control characters; the host is not a
cloud metadata name (:data:`METADATA_HOSTS`); every address it resolves to is allowed (:func:`forbidden_address`:
never link-local, which is where metadata services answer, unspecified, multicast or reserved; loopback and
private networks only when :data:`ALLOW_PRIVATE_HTTP` is ``1``). A name this host cannot resolve is refused:
behind an egress proxy the proxy resolves it, out of rsclip's sight, so it is fetched only when the operator
sets :data:`ALLOW_PROXY` to ``1`` *and* a proxy variable (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``) is
set; that proxy must then refuse internal addresses itself.

Redirects are never followed blindly: :func:`follow` requests one hop at a time (``allow_redirects=False``) and
checks each target with :func:`check_url` (and, when asked, that it stays on one origin), at most
:data:`MAX_REDIRECTS` hops. GDAL follows redirects itself and has no setting to stop it (GDAL 3.10 sets curl's
FOLLOWLOCATION unconditionally), so :func:`final_url` resolves a raster's redirects first and GDAL is given the
last, checked URL. A server that answers GDAL's later reads with a new redirect is outside this check (curl
still limits those to HTTP(S)); an egress firewall that blocks link-local addresses covers that case.
Requests never send ``~/.netrc`` credentials (``trust_env`` off; proxies come from the environment).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urljoin, urlparse

from rsclip.errors import LimitExceeded, UnsafeInput

HTTP_SCHEMES = ("http", "https")
METADATA_HOSTS = ("metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal")
# Set to 1 by an operator whose COGs or STAC API live on a private network (or a test's local server): loopback
# and private addresses may then be fetched. Link-local and metadata addresses never are.
ALLOW_PRIVATE_HTTP = "RSCLIP_ALLOW_PRIVATE_HTTP"
# Set to 1 (with a proxy variable) to fetch names only the egress proxy can resolve (module doc).
ALLOW_PROXY = "RSCLIP_ALLOW_PROXY"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
NEVER_READ = ("cloud metadata, link-local and (unless " + ALLOW_PRIVATE_HTTP + "=1) loopback and "
              "private-network addresses are never read")


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether rsclip must never connect to ``address`` (module doc); an IPv4 address written as IPv6
    (``::ffff:169.254.169.254``) is judged as the IPv4 address it is."""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local or address.is_unspecified or address.is_multicast:
        return True
    if address.is_loopback or address.is_private:
        return os.environ.get(ALLOW_PRIVATE_HTTP, "") != "1"
    return address.is_reserved


def proxy_allowed() -> bool:
    """Whether names this host cannot resolve may be fetched through the configured proxy (module doc)."""
    return os.environ.get(ALLOW_PROXY, "") == "1" and any(os.environ.get(v) for v in PROXY_VARIABLES)


def _shown(url: str) -> str:
    return url[:200] + ("..." if len(url) > 200 else "")


def check_url(url: str) -> str:
    """``url`` when rsclip may fetch it (module doc); raises :class:`UnsafeInput` naming it otherwise."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme.lower() not in HTTP_SCHEMES:
        raise UnsafeInput(f"{_shown(text)!r}: the {parsed.scheme or 'empty'}:// scheme is disabled here "
                          "(only http:// and https:// URLs are fetched)")
    host = (parsed.hostname or "").lower()
    if not host or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise UnsafeInput(f"{_shown(text)!r}: not a URL rsclip may fetch (no host, or spaces/control characters)")
    if host.rstrip(".") in METADATA_HOSTS:
        raise UnsafeInput(f"{_shown(text)}: {NEVER_READ}")
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        if proxy_allowed():
            return text
        raise UnsafeInput(f"{_shown(text)}: host {host[:100]} does not resolve here, so its addresses cannot be "
                          f"checked (behind a proxy that resolves it, set {ALLOW_PROXY}=1 and HTTPS_PROXY)") from None
    if any(forbidden_address(ipaddress.ip_address(info[4][0].split("%", 1)[0])) for info in infos):
        raise UnsafeInput(f"{_shown(text)}: {NEVER_READ}")
    return text


def origin(url: str) -> tuple[str, str, int | None]:
    """The scheme, host and port of ``url`` (default ports made explicit): what "the same host" compares."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    return scheme, (parsed.hostname or "").lower(), parsed.port or {"http": 80, "https": 443}.get(scheme)


def session():
    """A ``requests`` session that never reads ``~/.netrc`` (``trust_env`` off; proxies: :func:`proxies`), and
    still verifies TLS with the CA bundle the environment names as ``requests`` would."""
    import requests

    made = requests.Session()
    made.trust_env = False
    made.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return made


def proxies(url: str) -> dict[str, str]:
    """The proxy the environment names for ``url`` (``NO_PROXY`` honoured), as ``requests`` takes it."""
    from requests.utils import get_environ_proxies

    return get_environ_proxies(url)


def follow(http, method: str, url: str, *, timeout, same_origin: str | None = None, max_hops: int = MAX_REDIRECTS,
           on_request=None, **kwargs):
    """The response to ``method url`` on the ``requests`` session ``http`` (streamed, redirects followed here,
    each hop checked by :func:`check_url` and, with ``same_origin``, kept on that URL's :func:`origin`).

    ``on_request(url)`` is called before each request (a request budget). ``kwargs`` go to
    ``Request`` (headers, params, json); a 303, or a 301/302 answering a POST, goes on as a GET without a body.
    Raises :class:`UnsafeInput` for a refused hop and :class:`LimitExceeded` past ``max_hops`` redirects;
    network errors are ``requests``' own.
    """
    import requests

    for _ in range(max_hops + 1):
        check_url(url)
        if same_origin is not None and origin(url) != origin(same_origin):
            raise UnsafeInput(f"{_shown(url)}: on another host than {_shown(same_origin)} (not followed)")
        if on_request is not None:
            on_request(url)
        prepared = http.prepare_request(requests.Request(method, url, **kwargs))
        response = http.send(prepared, timeout=timeout, stream=True, allow_redirects=False, proxies=proxies(url))
        location = response.headers.get("Location")
        if response.status_code not in REDIRECTS or not location:
            return response
        response.close()
        url = urljoin(url, location.strip())
        if response.status_code == 303 or (response.status_code in (301, 302) and method.upper() == "POST"):
            method = "GET"
            kwargs = {k: v for k, v in kwargs.items() if k not in ("json", "data")}
        kwargs.pop("params", None)  # the Location is the whole next URL
    raise LimitExceeded(f"{_shown(url)}: more than {max_hops} redirects")


def final_url(url: str, timeout) -> str:
    """Where ``url`` ends after its redirects, every hop checked (:func:`follow`): what GDAL is given, since
    GDAL would follow redirects unchecked. A HEAD, or a one-byte GET where HEAD is refused; when the server
    cannot be reached the checked ``url`` is returned, and GDAL's own read then reports the failure."""
    import requests

    http, current = session(), check_url(url)

    def hop(target: str) -> None:
        nonlocal current
        current = target

    try:
        with follow(http, "HEAD", url, timeout=timeout, on_request=hop) as response:
            if response.status_code not in (405, 501):
                return current
        with follow(http, "GET", current, timeout=timeout, on_request=hop, headers={"Range": "bytes=0-0"}):
            return current
    except requests.RequestException:
        return current
    finally:
        http.close()
