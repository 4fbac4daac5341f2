"""What an API service may be started with, and what its answers may say: exposure needs a token, tokens are
read without being shown, error messages name no server path, OGC item parameters are checked."""

from __future__ import annotations

import pytest

from rsclip.app.api import features, guards
from rsclip.app.api.settings import ApiConfig, read_token
from rsclip.errors import InvalidInput, LimitExceeded, NotFound


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_binding_beyond_loopback_needs_a_token(host):
    with pytest.raises(InvalidInput, match="give a token"):
        ApiConfig(db="/data/db", host=host)
    assert ApiConfig(db="/data/db", host=host, token="x" * 20).hosts == ("*",)
    assert "127.0.0.1" in ApiConfig(db="/data/db").hosts


def test_processes_are_bounded_and_travel_in_the_arguments(monkeypatch):
    import argparse

    from rsclip.app.api import settings

    monkeypatch.delenv(settings.TOKEN_ENV, raising=False)
    for bad in (0, settings.MAX_PROCESSES + 1):
        with pytest.raises(InvalidInput, match="processes"):
            ApiConfig(db="/data/db", processes=bad)
    config = ApiConfig(db="/data/db", processes=3, workers=5, token="x" * 20, cors_origins=("http://a",))
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    words = settings.arguments(config)
    assert "x" * 20 not in " ".join(words)
    again = settings.config_of(parser.parse_args(words))
    assert (again.processes, again.workers, again.cors_origins, again.token) == (3, 5, ("http://a",), None)


def test_tokens_come_from_a_file_or_the_environment_and_are_never_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("RSCLIP_API_TOKEN", raising=False)
    assert read_token(None) is None
    file = tmp_path / "token"
    file.write_text("s3cret-s3cret-s3cret\nignored\n")
    assert read_token(str(file)) == "s3cret-s3cret-s3cret"
    monkeypatch.setenv("RSCLIP_API_TOKEN", "short")
    with pytest.raises(InvalidInput) as short:
        read_token(None)
    assert "short" not in str(short.value)
    assert "s3cret" not in repr(ApiConfig(db="/d", token="s3cret-s3cret-s3cret"))
    file.write_bytes(b"x" * 5000)
    with pytest.raises(LimitExceeded):
        read_token(str(file))
    with pytest.raises(InvalidInput, match="not found"):
        read_token(str(tmp_path / "missing"))


def test_messages_lose_server_paths_and_stay_one_line(tmp_path):
    db = str(tmp_path / "db")
    message = guards.scrubbed(f"table 'tiles' not found in {db}\n(see {db}/x.lance)", db)
    assert str(tmp_path) not in message and "\n" not in message and "DB/x.lance" in message
    assert len(guards.scrubbed("x" * 5000, db)) == guards.MAX_MESSAGE_CHARS


def test_errors_map_to_statuses():
    assert guards.status_of(NotFound("x")) == 404
    assert guards.status_of(LimitExceeded("x")) == 413
    assert guards.status_of(InvalidInput("x")) == 400
    assert guards.status_of(KeyError("x")) == 500


@pytest.mark.parametrize("params, words", [
    ({"limit": "0"}, "limit must be"), ({"limit": "10001"}, "limit must be"), ({"offset": "-1"}, "offset must be"),
    ({"bbox": "1,2,3"}, "bbox must be"), ({"bbox": "a,b,c,d"}, "bbox must be"), ({"f": "html"}, "GeoJSON"),
    ({"bbox-crs": "EPSG:3857"}, "GeoJSON"), ({"filter": "x"}, "unknown parameter"),
    ({"datetime": "x" * 200}, "too long"),
])
def test_item_parameters_are_checked(params, words):
    with pytest.raises(InvalidInput, match=words):
        features.ItemQuery.of(params, 0.5)


def test_item_parameters_read_as_the_standard_says():
    asked = features.ItemQuery.of({"limit": "20", "offset": "40", "bbox": "1,2,3,4", "datetime": "2020-01-01/.."},
                                  0.5)
    assert (asked.limit, asked.offset, asked.bbox, asked.date, asked.min_score) == (20, 40, (1, 2, 3, 4),
                                                                                    "2020-01-01/..", 0.5)
    assert features.ItemQuery.of({"datetime": "2020-05-01"}, 0.5).date == "2020-05-01/2020-05-01"
    with pytest.raises(NotFound):
        features.Collection.parse("tiles-x")
    assert features.Collection.parse("detections-my label").label == "my label"


def test_rsclip_api_refuses_to_expose_a_table_without_a_token(tmp_path, capsys, monkeypatch):
    from rsclip.app.cli import main

    monkeypatch.delenv("RSCLIP_API_TOKEN", raising=False)
    assert main(["api", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "give a token" in capsys.readouterr().err
    assert main(["api", str(tmp_path), "--token-file", str(tmp_path / "missing")]) == 2
    assert "token file" in capsys.readouterr().err
