"""Exporting a model as ``OUTPUT/model`` (rsclip.model.versions, rsclip.train.driver.export_model): readers
get the old model or the new one, complete, and a failure in the middle of the copy (the OS refusing a write
and killing the exporter; the object store lost mid-upload) leaves the old model complete and in place."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from infra.local_stack import environment
from rsclip.model import versions
from rsclip.runtime import storage
from rsclip.model.clip import load_model
from rsclip.errors import RsclipError
from rsclip.testing import build_tiny_clip
from tests.helpers import ROOT

PIXELS = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Three tiny CLIP exports with different weights."""
    root = tmp_path_factory.mktemp("exports")
    return [build_tiny_clip(root / f"m{seed}", seed=seed) for seed in range(3)]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _vectors(source) -> np.ndarray:
    return load_model(source, device="cpu").encode_images(list(PIXELS))


def test_local_exports_switch_a_link_keep_the_previous_version_and_adopt_a_folder_written_in_place(models, tmp_path):
    target = tmp_path / "out" / "model"
    target.parent.mkdir()
    # a model written in place by an older rsclip
    target.mkdir()
    for f in _files(models[0]):
        (target / f.name).write_bytes(f.read_bytes())
    first = versions.publish(_files(models[1]), str(target))
    assert target.is_symlink() and not Path(target.readlink()).is_absolute()
    np.testing.assert_allclose(_vectors(target), _vectors(models[1]), atol=1e-6)
    folders = tmp_path / "out" / "model-versions"
    kept = sorted(p.name for p in folders.iterdir())
    assert first in kept and len(kept) == 2  # the new one and the one written in place
    second = versions.publish(_files(models[2]), str(target))
    np.testing.assert_allclose(_vectors(target), _vectors(models[2]), atol=1e-6)
    assert sorted(p.name for p in folders.iterdir()) == sorted([first, second])
    from transformers import CLIPModel

    CLIPModel.from_pretrained(target)  # plain transformers follows the link


def test_a_local_export_killed_mid_copy_leaves_the_old_model(models, tmp_path):
    """The exporter runs with a file-size limit below the weights' size: the kernel kills it with SIGXFSZ
    while it writes them, after the smaller files are written. No Python cleanup runs."""
    target = tmp_path / "model"
    versions.publish(_files(models[0]), str(target))
    size = (models[1] / "model.safetensors").stat().st_size
    assert all(f.stat().st_size < size // 2 for f in _files(models[1]) if f.suffix != ".safetensors")
    code = (
        "import resource, signal\n"
        "from pathlib import Path\n"
        "from rsclip.model import versions\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a crash is what we want\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size // 2}, {size // 2}))\n"
        f"versions.publish(sorted(p for p in Path({str(models[1])!r}).iterdir() if p.is_file()), "
        f"{str(target)!r})\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGXFSZ, res.stderr[-2000:]
    partial = [p for p in (tmp_path / "model-versions").iterdir() if p.name.endswith(versions.PARTIAL)]
    assert len(partial) == 1 and (partial[0] / "config.json").is_file()  # the copy had begun
    np.testing.assert_allclose(_vectors(target), _vectors(models[0]), atol=1e-6)
    # the next export succeeds and clears what the crash left
    version = versions.publish(_files(models[2]), str(target))
    np.testing.assert_allclose(_vectors(target), _vectors(models[2]), atol=1e-6)
    assert not any(p.name.endswith(versions.PARTIAL) for p in (tmp_path / "model-versions").iterdir())
    assert target.resolve().name == version


class CuttingProxy:
    """A TCP proxy to the S3 server that forwards ``budget`` bytes of requests, then cuts every connection and
    refuses new ones: the object store lost in the middle of an upload."""

    def __init__(self, upstream: str, budget: int):
        host, port = upstream.split("://", 1)[1].split(":")
        self.upstream, self.budget, self.sent = (host, int(port)), budget, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.sockets: list[socket.socket] = [self.listener]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # cut
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.budget
                    if over:
                        return self.cut()
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def test_s3_exports_switch_a_pointer_and_survive_the_store_lost_mid_upload(models, s3, s3_prefix):
    target = f"{s3_prefix}/run/model"
    first = versions.publish(_files(models[0]), target)
    assert storage.read_bytes(f"{target}/{versions.POINTER}").decode() == first
    np.testing.assert_allclose(_vectors(target), _vectors(models[0]), atol=1e-6)

    size = (models[1] / "model.safetensors").stat().st_size
    proxy = CuttingProxy(s3.endpoint, budget=size // 2)
    with environment({"AWS_ENDPOINT_URL": proxy.endpoint}), pytest.raises(RsclipError):
        versions.publish(_files(models[1]), target)
    assert proxy.sent > size // 2
    fs, root = storage.filesystem(target)
    fs.invalidate_cache()
    started = [p for p in fs.find(f"{root}/{versions.VERSIONS}") if f"/{first}/" not in p]
    assert any(p.endswith("/config.json") for p in started), started  # the upload had begun
    assert storage.read_bytes(f"{target}/{versions.POINTER}").decode() == first
    np.testing.assert_allclose(_vectors(target), _vectors(models[0]), atol=1e-6)

    # the driver's export of a Ray checkpoint: the next version, without the optimiser state
    import ray.train

    from rsclip.train.driver import export_model
    from rsclip.train.loop import STATE_FILE

    (models[2] / STATE_FILE).write_bytes(b"optimiser state")
    try:
        assert export_model(ray.train.Checkpoint.from_directory(str(models[2])), f"{s3_prefix}/run") == target
    finally:
        (models[2] / STATE_FILE).unlink()
    np.testing.assert_allclose(_vectors(target), _vectors(models[2]), atol=1e-6)
    fs.invalidate_cache()
    current = versions.current_prefix(target).split("://", 1)[1]
    assert not fs.exists(f"{current}/{STATE_FILE}") and fs.exists(f"{current}/config.json")
    # the interrupted version is gone; the one it replaced is kept for readers that resolved it just before
    stored = fs.find(f"{root}/{versions.VERSIONS}")  # objects: an emptied folder may linger in a listing
    kept = {p[len(root):].split("/")[2] for p in stored}
    assert len(kept) == 2 and first in kept, stored
