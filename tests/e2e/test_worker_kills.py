"""kill -9 of the embedding job's workers while it writes fragments (real Ray head, real S3, real table):
Ray retries what they were doing, every tile lands once, and nothing they wrote is left uncommitted."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from rsclip.ingest.config import EmbedConfig
from rsclip.ingest.pipeline import run_embedding
from rsclip.table import tiles
from tests.e2e.test_embed_job import uncommitted_files
from tests.helpers import BUCKET

CHIPS = 160


class Killer(threading.Thread):
    """Kills (SIGKILL) the worker of the first running task and the first embedder actor the cluster shows."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address, self.killed, self.stop = address, {}, threading.Event()

    def _pids(self) -> dict[str, int]:
        from ray.util.state import list_actors, list_tasks

        found = {}
        for task in list_tasks(address=self.address, filters=[("state", "=", "RUNNING")], limit=1000,
                               raise_on_missing_output=False):
            if "write_tiles" in task.name and task.worker_pid:
                found.setdefault("write task", task.worker_pid)
        for actor in list_actors(address=self.address, filters=[("state", "=", "ALIVE")], limit=1000,
                                 raise_on_missing_output=False):
            if "MapWorker" in actor.class_name and actor.pid:
                found.setdefault("embedder actor", actor.pid)
        return found

    def run(self):
        while not self.stop.is_set() and len(self.killed) < 2:
            try:
                pids = self._pids()
            except Exception:  # the state API answers late while the cluster is busy: ask again
                pids = {}
            for what, pid in pids.items():
                if what not in self.killed and (what == "write task" or "write task" in self.killed):
                    os.kill(pid, signal.SIGKILL)
                    self.killed[what] = pid
            self.stop.wait(0.2)


@pytest.mark.slow
def test_workers_killed_while_writing_leave_every_tile_once_and_no_uncommitted_files(
        ray_driver, s3, s3_prefix, tiny_model, rsicd_files):
    client, prefix = s3.client(), s3_prefix.split("/", 3)[3]
    files = rsicd_files[300:300 + CHIPS]
    for f in files:
        client.upload_file(str(f), BUCKET, f"{prefix}/chips/{f.name}")
    archive, db = f"{s3_prefix}/chips", f"{s3_prefix}/db"
    config = EmbedConfig(archive=archive, db=db, model=str(tiny_model), batch_size=4, commit_rows=4,
                         cpus_per_actor=0.5, read_cpus=0.5, read_tasks=1, files_per_task=4, index="never")
    killer = Killer(ray_driver.dashboard_url)
    killer.start()
    try:
        summary = run_embedding(config)
    finally:
        killer.stop.set()
        killer.join(30)
    assert "write task" in killer.killed, "no write task was running to kill: the test proved nothing"
    table = tiles.open_table(db)
    ids = table.to_arrow().column(tiles.ID).to_pylist()
    want = {tiles.tile_id(f"{archive}/{f.name}", 0, 0, 150, 150) for f in files}
    assert len(ids) == len(want) and set(ids) == want
    assert summary.embedded == CHIPS and summary.failed == 0
    assert uncommitted_files(table) == set()
