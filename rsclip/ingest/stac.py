"""STAC as a listing source of the embedding job: the items of a catalog or an API search as its sources.

Each item becomes a source the planner takes (:class:`~rsclip.ingest.listing.ArchiveFile`), carrying its
time, id and cloud cover.

``--stac`` names a STAC API (``http(s)://``: searched with ``--collections``, ``--bbox``, ``--datetime``,
``--query``/``--max-cloud`` and ``--limit`` through pystac-client), a static catalog or collection JSON, an
ItemCollection (the saved answer of a search) or a newline-delimited file of items (local or ``s3://``).
The same search is applied to every item here too (:func:`matches`), so a catalog, an ItemCollection and an
API that lacks the query extension all give the items the search names.

``--assets`` picks what is read of each item: one asset (``visual``: a three-band COG), or three single-band
assets stacked as RGB in that order (``red,green,blue``; :mod:`rsclip.geo.stacked`, resampled onto the
finest one's grid). A source's uri is its asset's href, or the stack URI of its assets' hrefs; its version
is a hash of the item's id, ``updated`` time and asset hrefs and checksums (a STAC item has no ETag). An
item without an asset asked for, or whose asset is not a raster rsclip reads (suffix, scheme: :func:`asset_rules`),
becomes one error row, as does an item that cannot be read; the job goes on. Which assets a catalog may name
depends on where it is: an http(s) API's are read over http(s) only (``--allow-asset-schemes s3`` adds
``s3://``: an API otherwise makes the job read any bucket its role can), a catalog on S3's from ``s3://`` and
http(s), a local catalog's also from local files under its own folder (``--allow-asset-schemes file``: anywhere).
An API's requests are checked and bounded (:mod:`rsclip.ingest.stac_io`: ``--stac-other-hosts``,
``--stac-max-requests``). At most ``--limit`` items are embedded (the first ones in the search's
order); more are reported, not silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from rsclip.geo import dates, raster, stacked
from rsclip.runtime import storage
from rsclip.runtime.flags import setting
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.ingest import catalogs
from rsclip.ingest.listing import ArchiveFile

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000
MAX_QUERY_CHARS = 10_000
QUERY_OPS = ("eq", "neq", "lt", "lte", "gt", "gte", "in")
CLOUD_COVER = "eo:cloud_cover"
GROUP = "STAC input"
ASSET_SCHEMES = ("s3", "file")
MAX_REQUESTS = 1_000_000


@dataclass(frozen=True)
class StacOptions:
    """Where the job's items come from and which of their assets it reads (module doc)."""

    stac: str | None = setting(None, group=GROUP, help="STAC API URL, static catalog/collection JSON, "
                               "ItemCollection or .ndjson of items (local or s3://): embed its items instead of "
                               "an --archive")
    collections: tuple[str, ...] | None = setting(None, group=GROUP, help="collection ids to search")
    bbox: tuple[float, ...] | None = setting(None, group=GROUP, help="lon_min,lat_min,lon_max,lat_max to search")
    datetime: str | None = setting(None, group=GROUP, help="date range to search, e.g. 2020-01-01/2021-06-30 "
                                   "(.. or nothing for an open end)")
    query: str | None = setting(None, group=GROUP, help='STAC query extension JSON on item properties, e.g. '
                                '\'{"platform": {"eq": "sentinel-2a"}}\'')
    max_cloud: float | None = setting(None, group=GROUP, help="items with eo:cloud_cover at most this (percent)")
    limit: int = setting(DEFAULT_LIMIT, group=GROUP, help="most items embedded")
    assets: tuple[str, ...] = setting(("visual",), group=GROUP, help="the asset read (one 3-band COG), or three "
                                      "single-band assets stacked as RGB, e.g. red,green,blue")
    allow_asset_schemes: tuple[str, ...] = setting((), group=GROUP, help="assets read beyond the catalog's own "
                                                   "kind: s3 (s3:// assets of an http(s) API), file (local assets "
                                                   "outside a local catalog's folder)")
    stac_other_hosts: bool = setting(False, group=GROUP, help="follow a STAC API's links and redirects to other "
                                     "hosts than its own (each still checked)")
    stac_max_requests: int = setting(catalogs.DEFAULT_MAX_REQUESTS, group=GROUP,
                                     help="most requests sent to a STAC API in one run (pages, redirects)")

    def __post_init__(self) -> None:
        _check(self)

    @property
    def span(self) -> dates.DateRange | None:
        """The search's date range (None: any time)."""
        return dates.parse_range(self.datetime) if self.datetime else None

    def query_dict(self) -> dict:
        """The query extension object of ``--query`` and ``--max-cloud`` together."""
        query = json.loads(self.query) if self.query else {}
        if self.max_cloud is not None:
            query.setdefault(CLOUD_COVER, {})["lte"] = self.max_cloud
        return query


def _check(options: StacOptions) -> None:
    """Raise ``InvalidInput`` for options that cannot be searched with (module doc)."""
    if options.bbox is not None:
        b = options.bbox
        if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[0] > b[2] or b[1] > b[3]:
            raise InvalidInput(f"--bbox must be lon_min,lat_min,lon_max,lat_max with min <= max, got {b}")
    if options.datetime:
        dates.parse_range(options.datetime)
    if options.max_cloud is not None and not 0.0 <= options.max_cloud <= 100.0:
        raise InvalidInput(f"--max-cloud is a percentage in [0, 100], got {options.max_cloud}")
    if not 1 <= options.limit <= MAX_LIMIT:
        raise InvalidInput(f"--limit must be in [1, {MAX_LIMIT}], got {options.limit}")
    if not 1 <= options.stac_max_requests <= MAX_REQUESTS:
        raise InvalidInput(f"--stac-max-requests must be in [1, {MAX_REQUESTS}], got {options.stac_max_requests}")
    if not set(options.allow_asset_schemes) <= set(ASSET_SCHEMES):
        raise InvalidInput(f"--allow-asset-schemes takes {', '.join(ASSET_SCHEMES)}, got {options.allow_asset_schemes}")
    if len(options.assets) not in (1, 3) or any(not a.strip() for a in options.assets):
        raise InvalidInput(f"--assets is one asset key or three (stacked as RGB), got {options.assets}")
    if options.query:
        _check_query(options.query)


def _check_query(text: str) -> None:
    if len(text) > MAX_QUERY_CHARS:
        raise LimitExceeded(f"--query is {len(text)} characters long, more than {MAX_QUERY_CHARS}")
    try:
        query = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"--query is not JSON: {exc}") from None
    if not isinstance(query, dict) or not all(isinstance(v, dict) for v in query.values()):
        raise InvalidInput('--query is an object of property -> {operator: value}, e.g. {"gsd": {"lte": 10}}')
    bad = sorted({op for v in query.values() for op in v} - set(QUERY_OPS))
    if bad:
        raise InvalidInput(f"--query operators {bad} are not supported (use {', '.join(QUERY_OPS)})")


def _compare(value, op: str, wanted) -> bool:
    if value is None:
        return False
    try:
        return {"eq": lambda: value == wanted, "neq": lambda: value != wanted, "lt": lambda: value < wanted,
                "lte": lambda: value <= wanted, "gt": lambda: value > wanted, "gte": lambda: value >= wanted,
                "in": lambda: value in wanted}[op]()
    except TypeError:  # a property of another type than the query's value: not a match
        return False


def item_time(item) -> int | None:
    """The item's time in microseconds: ``datetime``, else ``start_datetime``; None without either."""
    when = item.datetime or item.common_metadata.start_datetime
    return dates.to_micros(when) if when is not None else None


def matches(item, options: StacOptions) -> bool:
    """Whether ``item`` is one the search of ``options`` names: its collection, bbox, time and properties."""
    if options.collections and item.collection_id not in options.collections:
        return False
    if options.bbox is not None and item.bbox is not None:
        lo_x, lo_y, hi_x, hi_y = options.bbox
        box = item.bbox if len(item.bbox) == 4 else (*item.bbox[:2], *item.bbox[3:5])
        if box[0] > hi_x or box[2] < lo_x or box[1] > hi_y or box[3] < lo_y:
            return False
    span = options.span
    if span is not None:
        when = item_time(item)
        if when is None or not span.contains([when])[0]:
            return False
    properties = item.properties
    return all(_compare(properties.get(name), op, wanted)
               for name, ops in options.query_dict().items() for op, wanted in ops.items())


class AssetRules(NamedTuple):
    """Which assets a catalog may name: the kinds of store (:func:`rsclip.ingest.catalogs.store_kind`) and the
    real folder that local assets stay under (None: anywhere)."""

    kinds: frozenset
    root: str | None


def asset_rules(options: StacOptions) -> AssetRules:
    """The :class:`AssetRules` of the catalog ``options.stac`` names (module doc)."""
    kind, allowed = catalogs.store_kind(options.stac), set(options.allow_asset_schemes)
    if kind == "http":
        return AssetRules(frozenset({"http"} | ({"s3"} & allowed)), None)
    if kind == "s3":
        return AssetRules(frozenset({"s3", "http"}), None)
    folder = os.path.realpath(storage.parent(str(storage.local_path(options.stac))))
    return AssetRules(frozenset({"s3", "http", "local"}), None if "file" in allowed else folder)


def _href_problem(href: str, rules: AssetRules) -> str:
    """Why an asset href is not read under ``rules`` (empty: it is)."""
    if not raster.is_raster(href):
        return f"asset {href[:300]} is not a raster rsclip reads ({', '.join(raster.RASTER_SUFFIXES)})"
    kind = catalogs.store_kind(href)
    if kind == "local" and ("local" not in rules.kinds or "://" in href):
        return f"asset {href[:300]}: a remote catalog's assets are read from s3:// and http(s):// only"
    if kind not in rules.kinds:
        return (f"asset {href[:300]}: an http(s) STAC API's assets are read over http(s) only "
                "(--allow-asset-schemes s3 reads its s3:// ones)")
    if kind == "local" and rules.root is not None:
        real = os.path.realpath(storage.local_path(href))
        if real != rules.root and not real.startswith(rules.root.rstrip(os.sep) + os.sep):
            return (f"asset {href[:300]}: outside the catalog's folder (--allow-asset-schemes file reads local "
                    "assets anywhere)")
    return ""


def item_source(item, options: StacOptions, rules: AssetRules) -> ArchiveFile:
    """The source that ``item`` gives the planner: the asset(s) ``options.assets`` names (module doc);
    ``problem`` set when it cannot be read under ``rules`` (:func:`asset_rules`)."""
    ref = item.get_self_href() or f"stac-item:{item.collection_id or ''}/{item.id}"
    cloud = item.properties.get(CLOUD_COVER)
    cloud = float(cloud) if isinstance(cloud, (int, float)) and math.isfinite(cloud) else None
    facts = {"datetime": item_time(item), "item_id": str(item.id), "cloud_cover": cloud}
    missing = [key for key in options.assets if key not in item.assets]
    if missing:
        return ArchiveFile(ref, -1, "", **facts, problem=f"item {item.id} has no asset {missing[0]!r} (it has: "
                                                         f"{', '.join(sorted(item.assets))[:300] or 'none'})")
    hrefs = [item.assets[key].get_absolute_href() or item.assets[key].href for key in options.assets]
    problem = next((p for p in (_guarded_problem(h, rules) for h in hrefs) if p), "")
    uri = hrefs[0] if len(hrefs) == 1 else stacked.stack_uri(hrefs)
    checksums = [item.assets[key].extra_fields.get("file:checksum") for key in options.assets]
    stamp = json.dumps([item.id, item.properties.get("updated"), hrefs, checksums], default=str)
    version = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return ArchiveFile(ref if problem else uri, -1, version, **facts, problem=problem)


def _guarded_problem(href: str, rules: AssetRules) -> str:
    try:
        return _href_problem(href, rules)
    except InvalidInput as exc:  # a local path no file system takes
        return f"asset {href[:300]}: {exc}"


def _search(options: StacOptions) -> dict:
    """pystac-client's search keywords for ``options``."""
    search = {"collections": list(options.collections) if options.collections else None,
              "bbox": list(options.bbox) if options.bbox else None,
              "datetime": options.span.interval() if options.span else None}
    query = options.query_dict()
    if query:
        search["query"] = query
    return {k: v for k, v in search.items() if v is not None}


def list_items(options: StacOptions) -> list[ArchiveFile]:
    """The sources of the items ``options`` names (at most ``options.limit``), sorted by uri, one per uri.

    Raises ``InvalidInput`` (``NotFound``) when the catalog or API cannot be read as STAC or refuses the
    search (or its pages loop), ``UnsafeInput`` when an API's request or redirect leads to a forbidden or
    other host, ``LimitExceeded`` past a page or request limit (:mod:`rsclip.ingest.stac_io`), and
    :class:`~rsclip.errors.StoreUnavailable` when its store or server cannot be reached.
    """
    return sorted(iter_items(options))


def iter_items(options: StacOptions) -> Iterator[ArchiveFile]:
    """The sources of :func:`list_items` as the search or walk yields them, page by page (the first of each
    uri; only the uris seen are kept). Raises as :func:`list_items`, when the pages that fail are reached."""
    if not options.stac:
        raise InvalidInput("no STAC source given (--stac)")
    api = storage.is_http(options.stac)
    found = catalogs.api_items(options.stac, _search(options), other_hosts=options.stac_other_hosts,
                               max_requests=options.stac_max_requests) if api else catalogs.document_items(options.stac)
    rules = asset_rules(options)
    seen: set[str] = set()
    for entry in found:
        if isinstance(entry, catalogs.Broken):
            source = ArchiveFile(entry.href, -1, "", problem=entry.problem)
        elif matches(entry, options):
            source = item_source(entry, options, rules)
        else:
            continue
        if source.uri in seen:
            continue
        if len(seen) >= options.limit:
            log.warning("more STAC items match than --limit %d: the first %d are embedded", options.limit,
                        options.limit)
            return
        seen.add(source.uri)
        yield source
