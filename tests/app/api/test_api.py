"""``rsclip api`` as users run it: a real service on loopback, called over HTTP. Every search mode answers what
the library answers; GDAL's OAPIF driver reads the detections collection page by page and gets the features
``rsclip export`` writes; labels written through the API show in the next request; hostile requests get
one-line errors that name no server path; a token guards it; a burst is answered or refused, never queued
without bound; slow clients hold no search slot; ``rsclip query --api`` prints what ``rsclip query`` prints."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyogrio
import pytest
import shapely

import rsclip
from rsclip.app.api.settings import ApiConfig
from rsclip.app.cli import main
from rsclip.app.records import records
from rsclip.errors import InvalidInput
from rsclip.search import export as ex
from rsclip.search.encoding import Text
from rsclip.search.query import similar_tiles
from rsclip.table import tiles
from tests.helpers.api import start_api

pytestmark = pytest.mark.slow  # a service process, and a detection run on Ray

TOKEN = "t0ken-for-the-tests-only-0123456789"


def same_rows(answer: list[dict], frame) -> None:
    """The API's rows are the library's: every field equal, the scores to float32 precision (the service
    answers from its resident copy once loaded, whose exact cosines round apart from Lance's in the 7th
    digit)."""
    expected = json.loads(json.dumps(records(frame), default=str))
    assert [r["id"] for r in answer] == [r["id"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in answer], [r["score"] for r in expected], rtol=1e-5, atol=1e-6)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "score"} for r in rows]  # noqa: E731
    assert strip(answer) == strip(expected)


def test_every_search_mode_answers_what_the_library_answers(scenes, api_service):
    db, ids = scenes
    area = [-180, -90, 180, 90]
    cases = [
        ({"text": "farmland", "k": 5}, lambda: rsclip.query(db, Text("farmland"), 5)),
        ({"text": "farmland", "k": 7, "bbox": area, "where": "x >= 128"},
         lambda: rsclip.query(db, Text("farmland"), 7, bbox=area, where="x >= 128")),
        ({"tile_id": ids[3], "k": 4}, lambda: similar_tiles(db, ids[3], 4)),
        ({"positive": ids[:2], "negative": ids[-1:], "k": 6},
         lambda: rsclip.query(db, k=6, positive=ids[:2], negative=ids[-1:])),
    ]
    dim = tiles.table_model(tiles.open_table(db, tiles.DEFAULT_TABLE))[1]
    vector = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    cases.append(({"vector": vector.tolist(), "k": 3}, lambda: rsclip.query(db, vector, 3)))
    for body, library in cases:
        answer = api_service.call("api/search", body)
        assert answer.status == 200, answer.body
        same_rows(answer.json()["results"], library())
        spans = dict(part.strip().split(";dur=") for part in answer.headers["server-timing"].split(","))
        assert list(spans) == ["wait", "search", "rows"] and all(float(ms) >= 0 for ms in spans.values())


def test_the_python_client_answers_as_rsclip_query(scenes, api_service, rsicd_files, monkeypatch):
    from rsclip.app.api.client import ApiClient

    db, ids = scenes
    monkeypatch.setenv("RSCLIP_API", api_service.url)
    client = ApiClient()
    frame = client.query("farmland", 6, bbox=(-180, -90, 180, 90))
    same_rows(records(frame), rsclip.query(db, Text("farmland"), 6, bbox=(-180, -90, 180, 90)))
    assert frame.attrs["search_path"] in ("lance", "resident (memory)")
    same_rows(records(client.query(positive=ids[:2], k=3)), rsclip.query(db, k=3, positive=ids[:2]))
    same_rows(records(client.query(rsicd_files[1], 4)), rsclip.query(db, rsicd_files[1], 4))


def test_an_uploaded_image_is_searched_as_the_library_searches_its_pixels(scenes, api_service, rsicd_files):
    from PIL import Image

    db, _ = scenes
    data = rsicd_files[0].read_bytes()
    body = {"image": {"name": rsicd_files[0].name, "data": base64.b64encode(data).decode()}, "k": 5}
    answer = api_service.call("api/search", body)
    assert answer.status == 200, answer.body
    pixels = np.asarray(Image.open(rsicd_files[0]).convert("RGB"))
    same_rows(answer.json()["results"], rsclip.query(db, pixels, 5))


def test_gdal_reads_the_detections_collection_page_by_page_as_rsclip_export_writes_it(scenes, api_service):
    db, _ = scenes
    source = f"OAPIF:{api_service.url}"
    layers = [name for name, _ in pyogrio.list_layers(source)]
    assert "detections-fields" in layers and "labels-fields" in layers
    served = pyogrio.read_dataframe(source, layer="detections-fields", PAGE_SIZE=7)
    exported = ex.export_frame(db, detections="fields", min_score=0.0)
    assert len(served) == len(exported) > 14  # more than two pages
    served = served.set_index("id").loc[exported["id"]]
    np.testing.assert_allclose(served["score"].to_numpy(dtype=float), exported["score"].to_numpy(dtype=float),
                               rtol=1e-6)
    assert list(served["uri"]) == list(exported["uri"])
    for got, want in zip(served.geometry, exported.geometry):
        assert shapely.equals_exact(got, want, tolerance=1e-9)


def test_gdal_reads_every_character_of_a_note_written_through_the_api(scenes, api_service):
    """Text beyond the Basic Multilingual Plane (GDAL turned U+1D800 sent as a \\u surrogate pair into U+FFFD)."""
    _, ids = scenes
    note = "signs 𝠀 😀 中 𠀀 naïve \"quoted\", =formula"
    assert api_service.call("api/labels/scripts", {"positive": ids[2:4], "note": note}).json() == {"written": 2}
    served = pyogrio.read_dataframe(f"OAPIF:{api_service.url}", layer="labels-scripts")
    assert sorted(served["id"]) == sorted(ids[2:4]) and set(served["note"]) == {note}


def test_items_page_with_next_links_bbox_and_threshold(scenes, api_service):
    db, _ = scenes
    exported = ex.export_frame(db, detections="fields", min_score=0.0)
    first = api_service.call("collections/detections-fields/items?limit=5").json()
    assert first["numberMatched"] == len(exported) and first["numberReturned"] == 5
    nxt = next(link["href"] for link in first["links"] if link["rel"] == "next")
    second = api_service.call(nxt.removeprefix(api_service.url)).json()
    seen = [f["id"] for f in first["features"] + second["features"]]
    assert seen == list(exported["id"][:10])
    west, south, east, north = exported.total_bounds
    box = [west, south, (west + east) / 2, north]
    boxed = api_service.call("collections/detections-fields/items?limit=1000&bbox=" + ",".join(map(str, box))).json()
    assert 0 < boxed["numberReturned"] < len(exported)
    assert all(shapely.geometry.shape(f["geometry"]).intersects(shapely.box(*box)) for f in boxed["features"])
    high = api_service.call("collections/detections-fields/items?limit=1000&min_score=0.5").json()
    assert all(f["properties"]["score"] >= 0.5 for f in high["features"])
    assert high["numberMatched"] == int((exported["score"] >= 0.5).sum())
    one = api_service.call(f"collections/detections-fields/items/{exported['id'][0]}").json()
    assert one["id"] == exported["id"][0] and one["properties"]["score"] == pytest.approx(exported["score"][0])


def test_labels_written_through_the_api_show_in_the_next_request(scenes, api_service):
    db, ids = scenes
    before = api_service.call("collections/labels-roads/items")
    assert before.status == 404
    added = api_service.call("api/labels/roads", {"positive": ids[5:7], "negative": ids[8:9], "note": "api"})
    assert added.status == 200 and added.json() == {"written": 3}
    items = api_service.call("collections/labels-roads/items").json()
    assert sorted(f["id"] for f in items["features"]) == sorted(ids[5:7] + ids[8:9])
    assert {f["properties"]["value"] for f in items["features"]} == {1, -1}
    listed = api_service.call("api/labels/roads").json()["labels"]
    assert len(listed) == 3
    removed = api_service.call("api/labels/roads", {"ids": ids[8:9]}, method="DELETE").json()
    assert removed == {"removed": 1}
    assert api_service.call("collections/labels-roads/items").json()["numberMatched"] == 2
    collections = [c["id"] for c in api_service.call("collections").json()["collections"]]
    assert "labels-roads" in collections


def test_a_collection_is_built_once_while_its_tables_stay_as_they_are(scenes, monkeypatch):
    from rsclip.app.api import features

    db, ids = scenes
    builds, original = [], features.selected
    monkeypatch.setattr(features, "selected", lambda *a: builds.append(a) or original(*a))  # counts the builds
    built = features.BuiltCollections(size=2)
    labels_of = features.Collection("labels", "built-once")
    asked = features.ItemQuery.of({}, 0.5)
    rsclip.add_labels(db, "built-once", ids[:2])
    first = built.get(str(db), "tiles", labels_of, asked)
    assert len(first) == 2 and built.get(str(db), "tiles", labels_of, asked) is first and len(builds) == 1
    rsclip.add_labels(db, "built-once", ids[2:3])  # a new version of the labels table: built anew
    assert len(built.get(str(db), "tiles", labels_of, asked)) == 3 and len(builds) == 2
    detections = features.Collection("detections", "fields")
    for threshold in (0.1, 0.2, 0.3):  # a third collection pushes the oldest out
        built.get(str(db), "tiles", detections, features.ItemQuery.of({"min_score": str(threshold)}, 0.5))
    assert len(builds) == 5
    built.get(str(db), "tiles", labels_of, asked)
    assert len(builds) == 6


def ring(vertices: int) -> str:
    """A valid WKT polygon of ``vertices`` points on a circle."""
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    points = [f"{10 + 10 * np.cos(a):.4f} {45 + 10 * np.sin(a):.4f}" for a in angles]
    return f"POLYGON(({', '.join(points + points[:1])}))"


@pytest.mark.parametrize("path, body, status, words", [
    ("api/search", {"text": "x", "colour": "red"}, 400, "unknown field 'colour'"),
    ("api/search", {"text": "x", "k": 0}, 400, "k must be"),
    ("api/search", {"text": "x", "tile_id": "ab"}, 400, "exactly one of"),
    ("api/search", {"positive": ["/etc/passwd"]}, 400, "takes tile ids"),
    ("api/search", {"tile_id": "../../etc/passwd"}, 400, "not a tile id"),
    ("api/search", {"vector": [1.0, "x"]}, 400, "finite numbers"),
    ("api/search", {"vector": [True, 1.0]}, 400, "finite numbers"),
    ("api/search", {"vector": [[1.0], 1.0]}, 400, "finite numbers"),
    ("api/search", {"vector": [1e39, 1.0]}, 400, "finite numbers"),  # beyond float32
    ("api/search", {"vector": [10**400, 1.0]}, 400, "finite numbers"),  # beyond any float
    ("api/search", {"vector": [float("nan"), 1.0]}, 400, "finite numbers"),
    ("api/search", {"image": {"name": "a.exe", "data": "AAAA"}}, 400, "not an image type"),
    ("api/search", {"image": {"name": "a.png", "data": "!!"}}, 400, "not base64"),
    ("api/search", {"text": "x", "polygon": ring(250_000)}, 413, "vertices"),
    ("api/search", {"text": "x", "where": "no_such_column = 1"}, 400, ""),
    ("api/search", {"text": "roads \ud800"}, 400, "not a character"),  # a lone surrogate: JSON allows it
    ("api/labels/roads", {"positive": ["0" * 32], "note": "\udfff"}, 400, "note holds '\\udfff' at character 1"),
    ("api/search", {"text": "x", "db": "/somewhere/else"}, 400, "serves another database"),
    ("api/tiles/..%2F..%2Fetc%2Fpasswd/preview.png", None, 404, ""),
    ("api/tiles/..passwd/preview.png", None, 400, "not a tile id"),
    ("api/tiles/" + "0" * 32 + "/preview.png", None, 404, "not in the table"),
    ("collections/tiles-x/items", None, 404, "no collection"),
    ("collections/detections-fields/items?limit=0", None, 400, "limit must be"),
    ("collections/detections-fields/items?bbox=1,2,3", None, 400, "bbox must be"),
    ("collections/detections-fields/items?sql=1", None, 400, "unknown parameter"),
    ("collections/detections-nothing/items", None, 404, "no detections of 'nothing'"),
    ("api/detections/fields?k=10001", None, 400, "k must be"),
    ("api/detections/fields?limit=2", None, 400, "unknown field 'limit'"),
    ("api/detections/fields?near=1,2", None, 400, "near"),
    ("no/such/route", None, 404, ""),
])
def test_hostile_requests_get_one_line_errors_naming_no_server_path(scenes, api_service, path, body, status, words):
    answer = api_service.call(path, body)
    assert answer.status == status, answer.body
    found = answer.json()
    assert set(found) == {"code", "description"} and "\n" not in found["description"]
    assert words in found["description"]
    assert str(scenes[0]) not in answer.body.decode() and str(scenes[0].parent) not in answer.body.decode()


def test_bodies_over_the_limit_or_not_json_are_refused(api_service):
    from rsclip.app.api.settings import MAX_BODY_BYTES

    assert api_service.call("api/search", raw=b"{" * 1000).status == 400
    assert api_service.call("api/search", raw=b"[1, 2]").json()["description"] == "the body must be a JSON object"
    host, port = api_service.url.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.putrequest("POST", "/api/search")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    connection.endheaders()  # the body is never sent: the declared size is refused before any is read
    big = connection.getresponse()
    assert big.status == 413 and "larger than" in json.loads(big.read())["description"]
    connection.close()


def test_a_preview_is_a_png_of_the_tile(scenes, api_service):
    from io import BytesIO

    from PIL import Image

    answer = api_service.call(f"api/tiles/{scenes[1][0]}/preview.png?size=64")
    assert answer.status == 200 and answer.headers["content-type"] == "image/png"
    assert max(Image.open(BytesIO(answer.body)).size) <= 64


def test_info_and_openapi_name_no_server_path(scenes, api_service):
    info = api_service.call("api/info")
    assert info.status == 200 and info.json()["rows"] == len(scenes[1])
    assert str(scenes[0]) not in info.body.decode()
    description = api_service.call("openapi.json").json()
    assert description["openapi"].startswith("3.") and "/api/search" in description["paths"]
    conformance = api_service.call("conformance").json()["conformsTo"]
    assert any(c.endswith("/conf/geojson") for c in conformance)


def test_the_cli_through_the_api_prints_what_it_prints_alone(scenes, api_service, capsys):
    db, ids = scenes
    for argv in (["farmland", "-k", "5"], ["--positive", ids[0], ids[1], "-k", "4", "--bbox", "-180,-90,180,90"]):
        for json_flag in (["--json"], []):
            assert main(["query", str(db), *argv, *json_flag]) == 0
            alone = capsys.readouterr().out
            assert main(["query", str(db), *argv, *json_flag, "--api", api_service.url]) == 0
            through = capsys.readouterr().out
            assert through == alone
    assert main(["query", str(db), "farmland", "--api", api_service.url, "--table", "other"]) == 2
    assert "serves another table" in capsys.readouterr().err


def test_labels_and_review_through_the_api_print_what_they_print_alone(scenes, api_service, capsys):
    db, ids = scenes
    api = ["--api", api_service.url]

    def printed(argv: list[str]) -> str:
        assert main(argv) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    add = ["label", "add", str(db), "cli-set", "--positive", ids[0], ids[1], "--negative", ids[2], "--note", "n"]
    for json_flag in (["--json"], []):
        alone = printed(add + json_flag)
        printed(["label", "remove", str(db), "cli-set", "--all"])
        assert printed(add + json_flag + api) == alone
        for listing in (["label", "list", str(db)], ["label", "list", str(db), "cli-set"]):
            assert printed(listing + json_flag + api) == printed(listing + json_flag)
        remove = ["label", "remove", str(db), "cli-set", ids[2], *json_flag]
        through = printed(remove + api)
        printed(add)
        assert printed(remove) == through and "1" in through
        for review in (["-k", "5"], ["-k", "0", "--min-score", "0.2"], ["--bbox", "-180,-90,180,90", "-k", "3"]):
            argv = ["review", str(db), "fields", *review, *json_flag]
            assert printed(argv + api) == printed(argv)
        suggest = ["suggest", str(db), "fields", "-k", "3", *json_flag]
        assert printed(suggest + api) == printed(suggest)
    rows = json.loads(printed(["review", str(db), "fields", "-k", "4", "--json"] + api))
    assert len(rows) == 4 and list(rows[0])[:5] == ["id", "uri", "score", "lon", "lat"] and "footprint" not in rows[0]
    assert main(["label", "list", str(db), "--table", "other", *api]) == 2
    assert "serves another table" in capsys.readouterr().err


def test_commands_through_the_api_load_no_model_table_or_array_library(scenes, api_service):
    heavy = ("torch", "transformers", "lancedb", "lance", "numpy", "pandas", "pyarrow", "fsspec")
    db = str(scenes[0])
    for argv in (["query", db, "farmland", "--json"], ["query", db, "farmland"], ["review", db, "fields"],
                 ["suggest", db, "fields"], ["label", "list", db, "--json"]):
        argv = [*argv, "--api", api_service.url]
        code = (f"import sys; from rsclip.app.cli import main; sys.stdout = open('/dev/null', 'w'); "
                f"code = main({argv!r}); "
                f"sys.stdout = sys.__stdout__; print(code, sorted(m for m in {heavy!r} if m in sys.modules))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert res.stdout.strip() == "0 []", argv + [res.stdout + res.stderr[-2000:]]


def test_a_token_guards_every_route_and_exposure_needs_one(scenes, tmp_path):
    with pytest.raises(InvalidInput, match="give a token"):
        ApiConfig(db=str(scenes[0]), host="0.0.0.0")
    served = start_api(scenes[0], tmp_path, token=TOKEN)
    try:
        for path in ("", "collections", "api/info"):
            assert served.call(path, token=None).status == 401
            assert served.call(path, token=TOKEN[:-1] + "x").status == 401
            assert served.call(path).status == 200
        assert TOKEN not in served.output()
        pyogrio.set_gdal_config_options({"GDAL_HTTP_AUTH": "BEARER", "GDAL_HTTP_BEARER": TOKEN})
        try:  # GDAL (and QGIS through it) sends the token as a header
            assert "detections-fields" in [name for name, _ in pyogrio.list_layers(f"OAPIF:{served.url}")]
        finally:
            pyogrio.set_gdal_config_options({"GDAL_HTTP_AUTH": None, "GDAL_HTTP_BEARER": None})
    finally:
        served.stop()


def test_a_service_of_two_processes_answers_as_one_and_shares_what_is_written(scenes, tmp_path):
    db, ids = scenes
    served = start_api(db, tmp_path, "--processes", "2", token=TOKEN)
    try:
        workers = subprocess.run(["ps", "-o", "args=", "--ppid", str(served.process.pid)], capture_output=True,
                                 text=True).stdout
        assert workers.count("multiprocessing") >= 2 and TOKEN not in workers, workers
        assert served.call("api/search", {"text": "farmland", "k": 3}, token=None).status == 401
        expected = rsclip.query(db, Text("farmland"), 5)
        for _ in range(6):  # each call a new connection: either process may answer
            answer = served.call("api/search", {"text": "farmland", "k": 5})
            assert answer.status == 200, answer.body
            same_rows(answer.json()["results"], expected)
        assert served.call("api/labels/ships-procs", {"positive": ids[1:3]}).json() == {"written": 2}
        for _ in range(6):
            assert served.call("collections/labels-ships-procs/items").json()["numberMatched"] == 2
        assert TOKEN not in served.output()
    finally:
        served.stop()
    assert subprocess.run(["ps", "-o", "pid=", "--ppid", str(served.process.pid)], capture_output=True,
                          text=True).stdout.strip() == ""


def test_a_burst_is_answered_or_refused_and_slow_clients_hold_no_slot(scenes, tmp_path):
    served = start_api(scenes[0], tmp_path, "--workers", "1", "--queue", "2")
    slow = []
    try:
        host, port = served.url.removeprefix("http://").rstrip("/").split(":")
        for _ in range(6):  # more than the slots: each sends headers, then never its body
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
            slow.append(sock)
        assert served.call("api/search", {"text": "farmland", "k": 3}).status == 200
        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(lambda _: served.call("api/search", {"text": "farmland", "k": 3}).status,
                                     range(200)))
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 3 and 503 in statuses
        assert served.call("api/search", {"text": "farmland", "k": 3}).status == 200
        assert served.process.poll() is None
    finally:
        for sock in slow:
            sock.close()
        served.stop()
