"""Shared fixtures: real services (SeaweedFS, a Ray head), tiny CLIP exports, the shared real data.

Tests that use a service fixture (or are marked ``slow``) are left out of ``make test-fast``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from infra.local_stack import RayHead, SeaweedFS, environment
from rsclip.model.clip_bpe import BPE_ENV, BPE_NAME
from rsclip.testing import build_tiny_clip
from tests.helpers.browser import CHROMIUM_ARGS, ensure_chromium
from tests.helpers import BUCKET, ROOT, RSICD_IMAGES, require_shared_data
from tests.helpers.openclip_reference import wheel_bpe


def pytest_configure(config):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def clip_bpe(tmp_path_factory) -> Path:
    """CLIP's BPE vocabulary, from the open_clip wheel, named by ``RSCLIP_CLIP_BPE`` for the session and every
    process it starts (as a host with neither open_clip nor the hub would name it): conversions in Ray workers
    included. rsclip does not ship the file."""
    path = tmp_path_factory.mktemp("clip-bpe") / BPE_NAME
    path.write_bytes(wheel_bpe())
    with environment({BPE_ENV: str(path)}):
        yield path


@pytest.fixture(autouse=True)
def fresh_resident_cache(monkeypatch):
    """Each test its own cache of resident copies, as a new process has (waiting for loads, the default size):
    copies, background loads and settings of earlier tests (the web page run in-process sets a server's) do
    not reach it."""
    from rsclip.search import memory_table

    monkeypatch.setattr(memory_table, "cache", memory_table.ResidentCache())


@pytest.fixture
def index_small_tables(monkeypatch):
    """Tables of a few thousand rows searched through their indexes, as tables past
    ``memory_table.EXACT_ROWS`` rows are (smaller ones are ranked exactly): for tests of the index paths."""
    from rsclip.search import memory_table

    monkeypatch.setattr(memory_table, "EXACT_ROWS", 999)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 with bucket ``rsclip-test``; the AWS variables point at it."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), buckets=(BUCKET,)).start()
    try:
        with environment(server.env):
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(s3):
    """A fresh ``s3://rsclip-test/<random>`` prefix for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ray_head(s3):
    """A ``ray start --head`` on 127.0.0.1 whose processes see the S3 server's AWS variables."""
    head = RayHead(num_cpus=2, env=s3.env).start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def ray_driver(ray_head):
    """This process as a driver of the session's Ray head (rsclip shipped to the workers), for one module."""
    import ray

    ray.init(address=ray_head.address, runtime_env={"py_modules": [str(ROOT / "rsclip")]}, log_to_driver=False)
    try:
        yield ray_head
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random CLIP written with save_pretrained (loads through the user-facing loader)."""
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def rsicd_files() -> list[Path]:
    """All real RSICD/AID scene JPEGs, sorted (the test fails when the shared data is missing)."""
    require_shared_data()
    return sorted(RSICD_IMAGES.glob("*.jpg"))


# Fixtures that start a real service (S3 server, Ray head, multi-node cluster, web server, Chromium), here or in
# a test module (``stack``: test_secrets, ``limited``: test_ingest_faults, ``map_server`` / ``time_server``: the
# web app tests): a test using one is marked ``slow`` and left out of ``make test-fast``.
SERVICE_FIXTURES = frozenset({"s3", "s3_prefix", "ray_head", "ray_driver", "cluster", "server", "browser", "page",
                              "stack", "limited", "map_server", "time_server"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (installed when missing), one per test module."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
