"""rsclip.app.web.data.previews: the message a preview gives when its object store cannot be used says why
(no credentials at all, or a store that does not answer), for chips and GeoTIFFs alike."""

from __future__ import annotations

import socket

import pytest

from rsclip.app.web.data import previews
from rsclip.app.web.text import readable_error
from rsclip.errors import StoreUnavailable

URIS = ("s3://rsclip-gone/archive/chips/airport_1.jpg", "s3://rsclip-gone/archive/scenes/naip.tif")


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No AWS variables, credential files or instance role: what a new shell has after a local store is gone."""
    import os

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "CPL_AWS_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.mark.parametrize("uri", URIS)
def test_a_preview_without_credentials_says_none_were_found(no_aws, uri):
    with pytest.raises(StoreUnavailable) as caught:
        previews.read_preview(uri, (0, 0, 10, 10))
    text = readable_error(caught.value)
    assert "no credentials for the object store were found" in text and "rejected" not in text, text
    assert uri in text


@pytest.mark.parametrize("uri", URIS)
def test_a_preview_from_a_store_that_is_gone_says_it_cannot_be_reached(no_aws, monkeypatch, uri):
    with socket.socket() as sock:  # a port nothing listens on: the demo's stopped local S3 server
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "demo")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "demo-secret")
    with pytest.raises(StoreUnavailable) as caught:
        previews.read_preview(uri, (0, 0, 10, 10))
    text = readable_error(caught.value)
    assert "cannot reach the object store" in text and "rejected" not in text and "no credentials" not in text, text
    assert "demo-secret" not in text
