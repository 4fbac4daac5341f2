"""Reading STAC documents for the embedding job, as hostile input: catalogs, ItemCollections, items, APIs.

Static catalogs and collections are walked link by link; ItemCollections and newline-delimited items are read
whole; STAC APIs are searched with pystac-client.

Documents are read through :class:`StoreIO` (pystac's I/O hook): local files or ``s3://`` objects through
:func:`rsclip.runtime.storage.read_bytes` (at most :data:`MAX_DOCUMENT_BYTES` each, the store's timeouts), and
only from the kind of store the catalog itself is on: links of a catalog on S3 are followed to S3 only, of a
local catalog to local files only (a catalog cannot make the job read ``/etc`` or an internal web server).
A walk visits each document once, at most :data:`MAX_DEPTH` catalogs deep: a local document is known by its real
path, so link cycles and folders that link back to themselves (symlinks, ``../``) end. An item or
child that cannot be read is yielded as a :class:`Broken` (an error row of the job); a root that cannot be
read, or is not STAC, raises. An API is searched through :class:`rsclip.ingest.stac_io.GuardedApiIO` (every
request checked and kept on the API's host, redirects checked hop by hop, pages and requests bounded, paging
loops refused) with the storage layer's timeouts; one that cannot be reached raises
:class:`~rsclip.errors.StoreUnavailable` before any cluster work.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import PurePosixPath
from typing import Iterator, NamedTuple
from urllib.parse import urlparse

import pystac

from rsclip.runtime import storage
from rsclip.errors import InvalidInput, RsclipError, StoreUnavailable, UnsafeInput
from rsclip.ingest.stac_io import DEFAULT_MAX_REQUESTS, GuardedApiIO
from rsclip.runtime.reporting import one_line

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 16
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".geojsonl")
CATALOG_TYPES = ("Catalog", "Collection")
API_PAGE_SIZE = 100
# Servers that answer an unknown property with a 4xx: the search's fault, not the server's.
BAD_REQUEST = range(400, 500)


class Broken(NamedTuple):
    """A linked document that could not be read as a STAC item: where it is and why."""

    href: str
    problem: str


def store_kind(href: str) -> str:
    """``"s3"``, ``"http"`` or ``"local"``: the kind of store ``href`` is on."""
    if storage.is_remote(href):
        return "s3"
    return "http" if storage.is_http(href) else "local"


class StoreIO(pystac.StacIO):
    """pystac's I/O for a catalog rooted on one kind of store (:func:`store_kind` of ``root``): reads local
    files and ``s3://`` objects under the storage layer's limits, never writes, and refuses links to another
    kind of store."""

    def __init__(self, root: str):
        super().__init__()
        self.kind = store_kind(root)

    def read_text(self, source, *args, **kwargs) -> str:
        href = str(getattr(source, "href", source))
        if store_kind(href) != self.kind or self.kind == "http":
            raise UnsafeInput(f"{href}: a catalog on {self.kind} storage links only to the same kind of store "
                              "(static catalogs are read from local files or s3://)")
        data = storage.read_bytes(href, max_bytes=MAX_DOCUMENT_BYTES)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{href}: not UTF-8 text, so not a STAC document") from None

    def write_text(self, dest, txt, *args, **kwargs) -> None:
        raise UnsafeInput(f"{dest}: catalogs are only read")


def _json(text: str, href: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{href}: not JSON ({one_line(exc)[:200]})") from None


def _stac_type(doc, href: str) -> str:
    """The STAC type of a parsed document; raises ``InvalidInput`` for anything that is not STAC."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind in CATALOG_TYPES and "stac_version" in doc and "links" in doc:
        return kind
    if kind == "Feature" and "stac_version" in doc and "assets" in doc:
        return "Item"
    if kind == "FeatureCollection" and isinstance(doc.get("features"), list):
        return "ItemCollection"
    raise InvalidInput(f"{href}: not a STAC catalog, collection, item collection or item (a JSON "
                       f"{type(doc).__name__}{' of type ' + repr(kind)[:60] if kind else ''})")


def _item(doc, href: str | None, base: str):
    """A pystac Item from a parsed document (its self href ``href``, or relative asset hrefs resolved
    against the folder ``base``). Raises ``InvalidInput`` when it is not a readable STAC item."""
    if not isinstance(doc, dict) or doc.get("type") != "Feature":
        raise InvalidInput("not a STAC item")
    try:
        item = pystac.Item.from_dict(doc, href=href, preserve_dict=False)
    except Exception as exc:  # pystac's own errors for missing or malformed fields
        raise InvalidInput(f"not a readable STAC item: {type(exc).__name__}: {one_line(exc)[:300]}") from None
    if href is None:
        item.set_self_href(storage.join(base, f"{item.id}.json"))
    return item


def document_items(href: str) -> Iterator:
    """Every item of the STAC document at ``href`` (local or ``s3://``): a catalog's or collection's (walked
    through its children), an ItemCollection's, a newline-delimited file's, or one item; unreadable linked
    items as :class:`Broken`. Raises ``InvalidInput`` (``NotFound``) when ``href`` itself cannot be read or is
    not STAC, :class:`StoreUnavailable` when its store cannot be reached."""
    io = StoreIO(href)
    base = storage.parent(href)
    text = io.read_text(href)
    if PurePosixPath(href.split("?", 1)[0]).suffix.lower() in NDJSON_SUFFIXES:
        yield from _lines(text, href, base)
        return
    doc = _json(text, href)
    kind = _stac_type(doc, href)
    if kind == "Item":
        yield _item(doc, href, base)
    elif kind == "ItemCollection":
        for i, feature in enumerate(doc["features"]):
            yield _guarded(lambda: _item(feature, None, base), f"{href}#{i}")
    else:
        yield from walk(href, io)


def _guarded(make, href: str):
    try:
        return make()
    except InvalidInput as exc:
        return Broken(href, str(exc))


def _lines(text: str, href: str, base: str) -> Iterator:
    found = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        found = True
        where = f"{href}#L{number}"
        yield _guarded(lambda: _item(_json(line, where), None, base), where)
    if not found:
        raise InvalidInput(f"{href}: an empty file holds no STAC items")


def document_key(href: str) -> str:
    """What makes two links one document: a local file's real path (symlinks and ``..`` resolved), else the
    URI with its path normalised."""
    if store_kind(href) == "local":
        try:
            return os.path.realpath(storage.local_path(href))
        except (InvalidInput, OSError):  # read_text refuses it with its own error
            return href
    parsed = urlparse(href)
    return parsed._replace(path=posixpath.normpath(parsed.path) if parsed.path else "").geturl()


def walk(root: str, io) -> Iterator:
    """Items of the catalog or collection at ``root``, its children's and theirs (each document once, known by
    :func:`document_key`, at most :data:`MAX_DEPTH` deep), in link order; unreadable items and children as
    :class:`Broken`."""
    top = pystac.read_file(root, stac_io=io)
    pending, seen = [(top, 0)], {document_key(root)}
    while pending:
        catalog, depth = pending.pop(0)
        for link in catalog.get_links(pystac.RelType.ITEM):
            href = link.get_absolute_href() or link.href
            if document_key(href) in seen:
                continue
            seen.add(document_key(href))
            yield _guarded(lambda: _item(_json(io.read_text(href), href), href, storage.parent(href)), href)
        if depth >= MAX_DEPTH:
            continue
        for link in catalog.get_links(pystac.RelType.CHILD):
            href = link.get_absolute_href() or link.href
            if document_key(href) in seen:
                continue
            seen.add(document_key(href))
            child = _guarded(lambda: _catalog(io, href), href)
            if isinstance(child, Broken):
                yield child
            else:
                pending.append((child, depth + 1))


def _catalog(io, href: str):
    doc = _json(io.read_text(href), href)
    if _stac_type(doc, href) not in CATALOG_TYPES:
        raise InvalidInput(f"{href}: a child link that is not a catalog or collection")
    return pystac.read_dict(doc, href=href, stac_io=io)


def api_items(url: str, search: dict, *, other_hosts: bool = False,
              max_requests: int = DEFAULT_MAX_REQUESTS) -> Iterator:
    """Items of a STAC API's item search at ``url`` with ``search`` (pystac-client's keywords), page by page,
    through :class:`GuardedApiIO` (``other_hosts``: links may lead off the API's host; ``max_requests``: the
    most requests sent).

    Raises :class:`StoreUnavailable` when the API cannot be reached or fails, ``InvalidInput`` when ``url`` is
    not a STAC API with item search or refuses the search (a 4xx answer), ``UnsafeInput`` for a request or
    redirect to a forbidden or other host, ``LimitExceeded`` past a page or request limit."""
    import pystac_client
    from pystac_client.exceptions import APIError

    io = GuardedApiIO(url, other_hosts=other_hosts, max_requests=max_requests)
    try:
        client = pystac_client.Client.open(url, stac_io=io, timeout=io.timeout)
        if not client.conforms_to(pystac_client.ConformanceClasses.ITEM_SEARCH):
            raise InvalidInput(f"{url} is not a STAC API with item search (it does not conform to ITEM_SEARCH)")
        query = search.pop("query", None)
        if query and client.conforms_to(pystac_client.ConformanceClasses.QUERY):
            search["query"] = query  # else filtered here only (the same test runs on every item anyway)
        yield from client.search(**search, limit=API_PAGE_SIZE).items()
    except RsclipError:
        raise
    except APIError as exc:
        if getattr(exc, "status_code", None) in BAD_REQUEST:
            raise InvalidInput(f"STAC API {url} refused the search: {one_line(exc)[:300]}") from None
        raise StoreUnavailable(f"STAC API {url}: cannot search it ({one_line(exc)[:300]})") from None
    except (ValueError, TypeError) as exc:  # a landing page or item that is not STAC
        raise InvalidInput(f"STAC API {url}: {type(exc).__name__}: {one_line(exc)[:300]}") from None
