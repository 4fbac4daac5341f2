"""Shared fixtures: real services (SeaweedFS, a Ray head), tiny CLIP exports, the shared real data."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from infra.local_stack import RayHead, SeaweedFS, environment
from rsclip.testing import build_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RSICD_DIR = SHARED_DATA / "rsicd-aid"
RSICD_IMAGES = RSICD_DIR / "RSICD_images"
GEOTIFF_DIR = SHARED_DATA / "geotiff"
BUCKET = "rsclip-test"


def pytest_configure(config):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not RSICD_IMAGES.is_dir():
        raise pytest.UsageError(f"the shared real data is missing: {RSICD_IMAGES} (set RSCLIP_SHARED_DATA)")


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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random CLIP written with save_pretrained (loads through the user-facing loader)."""
    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def rsicd_files() -> list[Path]:
    """All real RSICD/AID scene JPEGs, sorted."""
    return sorted(RSICD_IMAGES.glob("*.jpg"))


def spread_files(files: list[Path], n: int) -> list[Path]:
    """``n`` files spread evenly over ``files`` (scenes of many classes, not the first class only)."""
    return files[:: len(files) // n][:n]


def write_scene_table(db: Path, model: Path, files: list[Path], **columns):
    """A table at ``db`` holding ``files`` as whole-image tiles (150 x 150 RSICD scenes) embedded with
    ``model``; ``columns`` (bounds, crs) are added to the rows. Returns the vectors written."""
    import numpy as np
    from PIL import Image

    from rsclip.core import tiles
    from rsclip.core.model import load_model

    enc = load_model(model)
    vectors = enc.encode_images([np.asarray(Image.open(f).convert("RGB")) for f in files])
    n = len(files)
    rows = dict(uri=[str(f) for f in files], x=[0] * n, y=[0] * n, width=[150] * n, height=[150] * n,
                vector=vectors, **columns)
    tiles.add_tiles(tiles.create_table(db, model=str(model), dim=enc.dim), rows)
    return vectors
