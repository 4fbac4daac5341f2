"""The ASGI app of ``rsclip api`` (:func:`build_app`) and its server (:func:`serve`).

Library calls run on worker threads, at most ``workers`` at once with ``queue`` more waiting; a request beyond
that is answered 503 at once (never queued without bound). Bodies are read before a slot is taken, within a
deadline and a size (:mod:`~rsclip.app.api.guards`), so a slow client holds no search slot. The resident copy
of the table loads in the background when a search first asks for it (searches go through Lance meanwhile,
and after a write until the new version's copy is loaded: rsclip.search.memory_table).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from functools import partial
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rsclip.app.api import calls, exports, features, guards, openapi, settings
from rsclip.app.api.settings import ApiConfig
from rsclip.app.records import records
from rsclip.search.export import json_bytes
from rsclip.errors import InvalidInput, RsclipError

log = logging.getLogger("rsclip.api")


class JSON(JSONResponse):
    """JSON answers: UTF-8, every character as itself, timestamps as text (:func:`rsclip.search.export.json_bytes`:
    what GDAL's OAPIF driver, QGIS's reader, reads back unchanged)."""

    def render(self, content) -> bytes:
        return json_bytes(content)


class GeoJSON(JSON):
    media_type = features.GEOJSON


class Service:
    """One table served: its config, the worker threads' limiter and the request slots."""

    def __init__(self, config: ApiConfig):
        self.config = config
        self.limiter = anyio.CapacityLimiter(config.workers)
        self.slots = guards.Slots(config.workers + config.queue, "requests")
        self.bodies = guards.Slots(settings.LARGE_BODY_SLOTS, "large uploads")
        self.collections = features.BuiltCollections()

    async def run(self, call, *args):
        """``call(*args)`` on a worker thread, holding a request slot (503 when none is free)."""
        with self.slots.take():
            return await anyio.to_thread.run_sync(partial(call, *args), limiter=self.limiter)

    def checked_target(self, body: dict) -> None:
        """Refuse a request meant for another table (a client names the DB and table it was given)."""
        for name, served in (("db", self.config.db), ("table", self.config.table)):
            if body.get(name) is not None and not same_place(body[name], served):
                raise InvalidInput(f"this service serves another {'database' if name == 'db' else 'table'}")


def same_place(given, served: str) -> bool:
    import os

    from rsclip.runtime import storage

    if not isinstance(given, str):
        return False
    if storage.is_remote(given) or storage.is_remote(served):
        return given.rstrip("/") == served.rstrip("/")
    return os.path.realpath(given) == os.path.realpath(served)


def base_url(request: Request) -> str:
    return str(request.base_url)


def routes(service: Service) -> list[Route]:
    """Every route: OGC API - Features at the root, the rsclip API under ``/api``."""
    return feature_routes(service) + api_routes(service)


def feature_routes(service: Service) -> list[Route]:
    """OGC API - Features: landing page, conformance, the API description, collections and their items."""
    db, table, config = service.config.db, service.config.table, service.config

    async def landing(request):
        return JSON(features.landing(base_url(request)))

    async def conformance(request):
        return JSON({"conformsTo": list(features.CONFORMANCE)})

    async def api_description(request):
        return JSON(openapi.description(), media_type="application/vnd.oai.openapi+json;version=3.0")

    async def collections(request):
        found = await service.run(features.collections_of, db, table)
        base = base_url(request)
        return JSON({"collections": [features.describe(base, c, config.min_score) for c in found],
                     "links": [features.link(f"{base}collections", "self", "application/json")]})

    async def collection(request):
        chosen = features.Collection.parse(request.path_params["collection"])
        asked = features.ItemQuery.of({}, config.min_score)
        gdf = await service.run(service.collections.get, db, table, chosen, asked)
        return JSON(features.describe(base_url(request), chosen, config.min_score, features.extent_of(gdf)))

    async def items(request):
        chosen = features.Collection.parse(request.path_params["collection"])
        params = dict(request.query_params)
        asked = features.ItemQuery.of(params, config.min_score)
        gdf = await service.run(service.collections.get, db, table, chosen, asked)
        url = f"{base_url(request)}collections/{quote(chosen.id)}/items"
        return GeoJSON(features.items(gdf, asked, url, params))

    async def item(request):
        chosen = features.Collection.parse(request.path_params["collection"])
        wanted = request.path_params["feature"]
        gdf = await service.run(service.collections.get, db, table, chosen, features.ItemQuery.of({}, config.min_score))
        match = gdf[gdf["id"] == wanted]
        if not len(match):
            raise guards.ApiError(404, f"no feature {wanted[:80]!r} in {chosen.id}")
        found = features.items(match, features.ItemQuery(1, 0, None, None, config.min_score), "", {})["features"][0]
        return GeoJSON(found | {"links": [features.link(str(request.url), "self", features.GEOJSON)]})

    return [Route("/", landing), Route("/conformance", conformance), Route("/openapi.json", api_description),
            Route("/api", api_description), Route("/collections", collections),
            Route("/collections/{collection}", collection), Route("/collections/{collection}/items", items),
            Route("/collections/{collection}/items/{feature}", item)]


def api_routes(service: Service) -> list[Route]:
    """The rsclip API: table info, search, labels, detections, exports and tile previews."""
    db, table, config = service.config.db, service.config.table, service.config

    async def info(request):
        return JSON(await service.run(table_info, db, table))

    async def search(request):
        body = await guards.read_json(request, service.bodies)
        service.checked_target(body)
        answer, spans = await service.run(timed_search, db, table, body, time.perf_counter())
        return JSON(answer, headers={"Server-Timing": server_timing(spans)})

    async def label_sets(request):
        from rsclip.table.labels import label_sets as read_sets

        service.checked_target(dict(request.query_params))
        return JSON({"labels": records(await service.run(lambda: read_sets(db, table=table)))})

    async def labels(request):
        return JSON(await label_call(service, request, db, table))

    async def detections(request):
        if request.method == "POST":
            body = await guards.read_json(request, service.bodies)
        else:
            body = calls.detection_params(dict(request.query_params))
        service.checked_target(body)
        label = request.path_params["label"]
        return JSON(await service.run(calls.detections, db, table, label, body, config.min_score))

    async def suggest(request):
        from rsclip.search.suggest import suggest_labels

        params = dict(request.query_params)
        calls.checked_fields(params, ("k", "db", "table"))
        service.checked_target(params)
        k = features.integer(params.get("k"), "k", 10, 1, settings.MAX_PAGE)
        found = await service.run(lambda: suggest_labels(db, request.path_params["label"], k=k, table=table))
        return JSON({"results": records(found)})

    async def export(request):
        from rsclip.search.export_formats import MEDIA_TYPES

        body = await guards.read_json(request, service.bodies)
        service.checked_target(body)
        found = await service.run(exports.export_file, db, table, body)
        return Response(found.data, media_type=MEDIA_TYPES[found.format],
                        headers={settings.FEATURES_HEADER: str(found.features)})

    async def preview(request):
        size = features.integer(request.query_params.get("size"), "size", 256, 16, 1024)
        png = await service.run(calls.preview_png, db, table, request.path_params["tile"], size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    return [Route("/api/info", info), Route("/api/search", search, methods=["POST"]),
            Route("/api/labels", label_sets), Route("/api/labels/{label}", labels, methods=["GET", "POST", "DELETE"]),
            Route("/api/detections/{label}", detections, methods=["GET", "POST"]),
            Route("/api/suggest/{label}", suggest), Route("/api/export", export, methods=["POST"]),
            Route("/api/tiles/{tile}/preview.png", preview)]


def timed_search(db: str, table: str, body: dict, arrived: float) -> tuple[dict, dict[str, float]]:
    """The answer to a search body and the seconds it spent waiting for a worker thread (``wait``), searching
    (``search``) and turning its rows into records (``rows``)."""
    started = time.perf_counter()
    found = calls.search(db, table, body)
    searched = time.perf_counter()
    answer = calls.answer_of(found)
    return answer, {"wait": started - arrived, "search": searched - started, "rows": time.perf_counter() - searched}


def server_timing(spans: dict[str, float]) -> str:
    """A ``Server-Timing`` header (W3C) of spans in seconds: what a client (bench/api.py, a browser's developer
    tools) sees the service spend on a request, apart from HTTP and the network."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in spans.items())


def table_info(db: str, table: str) -> dict:
    """The table's info without where it is stored (answers name no server path)."""
    from rsclip.search.info import table_info as info

    found = info(db, table)
    found.pop("db", None)
    found.pop("model_location", None)
    return found


async def label_call(service: Service, request: Request, db: str, table: str) -> dict:
    """List (GET), add (POST: positive, negative, note) or remove (DELETE: ids, or the whole set) labels."""
    from rsclip.table import labels as lab

    label = request.path_params["label"]
    if request.method == "GET":
        service.checked_target(dict(request.query_params))
        return {"labels": records(await service.run(lambda: lab.labels_with_uris(db, label, table=table)))}
    body = await guards.read_json(request, service.bodies)
    service.checked_target(body)
    if request.method == "POST":
        calls.checked_fields(body, ("positive", "negative", "note", "db", "table"))
        positive = calls.example_ids(body.get("positive"), "positive") or []
        negative = calls.example_ids(body.get("negative"), "negative") or []
        note = body.get("note")
        written = await service.run(lambda: lab.add_labels(db, label, positive, negative, table=table, note=note))
        return {"written": written}
    calls.checked_fields(body, ("ids", "db", "table"))
    ids = calls.example_ids(body.get("ids"), "ids")
    return {"removed": await service.run(lambda: lab.remove_labels(db, label, ids, table=table))}


def build_app(config: ApiConfig) -> Starlette:
    """The ASGI app serving ``config``: routes, errors as JSON, Host check, CORS when configured, the token."""
    from rsclip.search.searchers import serve_searches

    serve_searches(config.resident_max_gb, searches_at_once=config.workers)  # the process's search slots
    warm_up(config.db, config.table)  # before any request: a model loaded by two threads at once can fail
    service = Service(config)

    async def on_error(request, error):
        return guards.error_answer(error, config.db)

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(config.hosts))]
    if config.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST", "DELETE"],
                                     allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(guards.TokenGuard, token=config.token))
    async def on_http_error(request, error: HTTPException):
        return guards.error_answer(guards.ApiError(error.status_code, str(error.detail), dict(error.headers or {})),
                                   config.db)

    handlers = {RsclipError: on_error, guards.ApiError: on_error, HTTPException: on_http_error, Exception: on_error}
    return Starlette(routes=routes(service), middleware=middleware, exception_handlers=handlers)


def warm_up(db: str, table: str) -> None:
    """Load the table's model and start loading its resident copy (in the background), so that the first
    requests of each service process do not pay for them; a failure is left to the requests to report."""
    from rsclip.model.clip import cached_model
    from rsclip.search.searchers import searcher_for
    from rsclip.table import tiles

    try:
        found = tiles.open_table(db, table)
        searcher_for(found, resident=True)
        cached_model(tiles.table_model(found)[0])
    except Exception as exc:  # noqa: BLE001 - the requests report it
        log.warning("warming up: %s", guards.scrubbed(str(exc), db))


def serve(config: ApiConfig) -> None:
    """Serve ``config`` until interrupted: uvicorn, one process or ``config.processes`` sharing the port (each
    builds its app from the arguments passed in the environment); connections beyond a bound get 503."""
    import uvicorn

    options = dict(host=config.host, port=config.port, log_level="warning", timeout_keep_alive=5,
                   limit_concurrency=4 * (config.workers + config.queue) + 16, server_header=False,
                   date_header=False, access_log=False)
    if config.processes == 1:
        uvicorn.run(build_app(config), **options)
        return
    os.environ[settings.ARGUMENTS_ENV] = json.dumps(settings.arguments(config))
    if config.token:
        os.environ[settings.TOKEN_ENV] = config.token
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=config.processes, **options)


def app_from_environment() -> Starlette:
    """The app of one of several service processes: the configuration its parent passed (:func:`serve`)."""
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return build_app(settings.config_of(parser.parse_args(json.loads(os.environ[settings.ARGUMENTS_ENV]))))
