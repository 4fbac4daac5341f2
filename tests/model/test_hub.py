"""Hub models (issue 24, item 6): an unreachable hub is one error line, not thirty seconds of retry logs; a model
the local cache holds loads with no network at all.

The hub is unreachable for real: ``HF_ENDPOINT`` names a closed port on 127.0.0.1 and ``HF_HOME`` an empty
folder, in a subprocess (huggingface_hub reads both when imported).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsclip.model.sources import DEFAULT_MODEL
from rsclip.table import tiles
from rsclip.testing import build_tiny_clip
from tests.helpers import ROOT

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
                 "HF_HUB_ETAG_TIMEOUT", "HF_ENDPOINT", "HF_HOME")


def _closed_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(hf_home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(hf_home), **extra}


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    # generous bound: the point is the output, which must hold no retries (each retry waits seconds)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "Retry" not in res.stderr, res.stderr  # the hub logs "Retrying in 1s [Retry 1/5]"
    return lines[0]


@pytest.fixture
def hub_table(tmp_path) -> Path:
    """A table whose recorded model is the default hub model (as a table embedded with it is)."""
    db = tmp_path / "db"
    vector = np.zeros(32, np.float32)
    vector[0] = 1
    tiles.add_tiles(tiles.create_table(db, model=DEFAULT_MODEL, dim=32),
                    dict(uri=["a.png"], x=[0], y=[0], width=[8], height=[8], vector=[vector]))
    return db


def test_an_unreachable_hub_is_one_line_naming_model_and_hub_offline(tmp_path, hub_table):
    env = _env(tmp_path / "hf")
    for args in (["-m", "rsclip", "query", str(hub_table), "a port"],
                 ["-c", "import rsclip; rsclip.load_model(device='cpu')"]):
        res = _run(args, env)
        if args[0] == "-c":  # the library raises: its traceback ends with the one line
            assert res.returncode == 1 and "Retry" not in res.stderr, res.stderr
            line = res.stderr.strip().splitlines()[-1]
        else:
            line = _one_error_line(res)
        assert DEFAULT_MODEL in line and "cannot be reached" in line, line
        assert "--model" in line and "HF_HUB_OFFLINE" in line, line


def test_hub_offline_and_not_cached_is_one_line(tmp_path):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    res = _run(["-m", "rsclip", "classify", str(image), "--labels", "a", "b"],
               _env(tmp_path / "hf", HF_HUB_OFFLINE="1"))
    line = _one_error_line(res)
    assert DEFAULT_MODEL in line and "HF_HUB_OFFLINE is set" in line and "--model" in line, line


def test_a_cached_hub_model_loads_and_is_named_by_its_revision_with_the_hub_unreachable(tmp_path):
    """The cache's snapshot is used as it is: no look-up, so no wait and no error offline."""
    repo = tmp_path / "hf" / "hub" / f"models--{DEFAULT_MODEL.replace('/', '--')}"
    build_tiny_clip(tmp_path / "tiny")
    shutil.copytree(tmp_path / "tiny", repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    code = ("import rsclip; from rsclip.model.sources import model_identity; "
            "print(rsclip.load_model(device='cpu').dim, model_identity(rsclip.DEFAULT_MODEL).location)")
    res = _run(["-c", code], _env(tmp_path / "hf"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["32", f"{DEFAULT_MODEL}@{COMMIT}"]
    assert "Retry" not in res.stderr, res.stderr  # the hub logs "Retrying in 1s [Retry 1/5]"
