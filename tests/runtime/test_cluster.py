"""No run waits forever: the jobs check what they ask of the cluster before starting (and that every node can
reach the store the driver reaches), and a watchdog reports, then stops, a run that makes no progress.

Real Ray heads (the session's 2-CPU ``ray_head``; private heads where a node must differ), the real job
scripts, a real SeaweedFS, and a real socket server for an S3 endpoint that takes object reads and never
answers. What fits where is also checked as plain arithmetic, without Ray.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import signal
import time

import pytest
import yaml

from infra.local_stack import RayHead
from rsclip.runtime import cluster
from rsclip.runtime.cluster import Demand, NodeShape, most_that_fit
from rsclip.runtime.watchdog import Watchdog
from rsclip.errors import ClusterUnfit, InvalidInput, RsclipError
from tests.helpers import BUCKET, ROOT, RSICD_DIR

EMBED, FINETUNE = "jobs/embed_archive.py", "jobs/finetune.py"
EMBED_FLAGS = "change --num-actors, --cpus-per-actor, --gpus-per-actor or --read-cpus"
TRAIN_FLAGS = "change --num-workers, --cpus-per-worker, --use-gpu or --data-cpus"
ACTOR = {"CPU": 1.0, "GPU": 1.0}
READ = {"CPU": 1.0}


def demand(count: int, bundle=ACTOR, task=READ) -> Demand:
    return Demand("embedder actors", count, bundle, "read task", task, "--num-actors")


# ---------------------------------------------------------------- what fits, as arithmetic


def test_bundles_fit_per_node_and_one_node_keeps_room_for_the_data_task():
    two_cpus = [NodeShape({"CPU": 2.0}, 1)]
    assert most_that_fit(demand(1, {"CPU": 1.0}, {"CPU": 0.5}), two_cpus) == 1  # 2 x 1 CPU leaves no 0.5
    assert most_that_fit(demand(1, {"CPU": 0.5}, {"CPU": 0.5}), two_cpus) == 3
    # a GPU bundle only fits GPU nodes; the read task may run on a CPU-only node beside them
    nodes = [NodeShape({"CPU": 4.0}, 1), NodeShape({"CPU": 8.0, "GPU": 1.0}, 2)]
    assert most_that_fit(demand(1), nodes) == 2
    assert most_that_fit(demand(1), [NodeShape({"CPU": 1.0, "GPU": 1.0}, 3)]) == 2  # one node runs the read
    assert most_that_fit(demand(1), [NodeShape({"CPU": 64.0}, None)]) == 0  # no GPU anywhere, ever
    assert most_that_fit(demand(1), [NodeShape({"CPU": 8.0, "GPU": 1.0}, None)]) == float("inf")
    assert most_that_fit(demand(1, task={"CPU": 16.0}), nodes) == 0  # no node can run the read task


def test_the_launcher_config_gives_the_autoscalers_node_types(tmp_path, monkeypatch):
    """On a cluster.yaml head the autoscaler's config lies in ~/ray_bootstrap_config.yaml: its node types
    hold the KubeRay/README sizing (8 GPU actors) but not a ninth."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    monkeypatch.setattr(cluster, "LAUNCHER_CONFIG", tmp_path / "ray_bootstrap_config.yaml")
    cluster.LAUNCHER_CONFIG.write_text(json.dumps(config))
    types = cluster._launcher_node_types({"head", "gpu_worker"})
    counts = {t.name: t.count for t in types}
    assert counts == {"head": 1, "gpu_worker": 8, "cpu_worker": 16}
    assert most_that_fit(demand(8), types) == 8
    assert cluster._launcher_node_types({"some-other-cluster-type"}) is None  # a stale file is not trusted


def test_no_secret_may_travel_in_a_runtime_env():
    cluster.refuse_secrets({"env_vars": {"RAY_ADDRESS": "10.0.0.1:6379"}, "py_modules": ["/app/rsclip"]})
    for env in ({"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}, {"env_vars": {"AWS_SESSION_TOKEN": "x"}},
                {"env_vars": {"HF_TOKEN": "x"}}, {"env_vars": {"DB_PASSWORD": "x"}},
                {"working_dir": "https://user:pat@github.com/o/r/archive/main.zip"}):
        with pytest.raises(InvalidInput, match="runtime_env"):
            cluster.refuse_secrets(env)
    with pytest.raises(InvalidInput, match="AWS_SECRET_ACCESS_KEY"):
        cluster.start_ray("local", runtime_env={"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}})


def test_stall_settings_are_flags_of_both_jobs_and_refuse_negative_values():
    from rsclip.ingest.config import EmbedConfig
    from rsclip.train.config import TrainConfig

    for cls in (EmbedConfig, TrainConfig):
        assert {"stall_timeout", "stall_abort"} <= set(cls.__dataclass_fields__)
    with pytest.raises(InvalidInput, match="stall"):
        EmbedConfig(archive="a", db="d", stall_abort=-1)
    with pytest.raises(InvalidInput, match="stall_timeout"):
        TrainConfig(data=["d"], output="o", stall_timeout=-1).validate()


# ---------------------------------------------------------------- the watchdog, on a driver that is stuck


def test_watchdog_reports_then_stops_a_driver_without_progress(caplog):
    started = time.monotonic()
    with pytest.raises(RsclipError, match=r"demo run made no progress for \d+ s and was stopped: driver: "
                                          r"waiting for the disk; .*raise --stall-abort"):
        with Watchdog("demo run", report_after=0.5, stop_after=2.0) as dog:
            dog.progress("waiting for the disk")
            while time.monotonic() - started < 60:  # stuck; the watchdog interrupts it
                time.sleep(0.05)
    assert time.monotonic() - started < 60
    assert "demo run has made no progress for" in caplog.text


def test_watchdog_stops_a_driver_whose_interrupt_was_ignored_and_blocked_then_restores_both():
    """Code run before (a library, a server) may have set SIGINT aside: the stop must still reach the driver."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    started = time.monotonic()
    try:
        with pytest.raises(RsclipError, match="quiet run made no progress"):
            with Watchdog("quiet run", report_after=0, stop_after=1.0):
                while time.monotonic() - started < 60:
                    time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


def test_watchdog_stays_quiet_while_the_driver_makes_progress(caplog):
    with Watchdog("busy run", report_after=0.5, stop_after=1.0) as dog:
        for i in range(30):
            dog.progress(f"batch {i}")
            time.sleep(0.1)
    assert "no progress" not in caplog.text


# ---------------------------------------------------------------- a request the cluster can never hold


def test_finetune_that_can_never_fit_fails_at_once_in_one_line(ray_head, tiny_model, tmp_path):
    """The example of the issue: two workers of 1 CPU on a 2-CPU cluster leave no CPU for decoding."""
    res = ray_head.submit(["python", FINETUNE, "--data", str(RSICD_DIR), "--output", str(tmp_path / "run"),
                           "--model", str(tiny_model), "--num-workers", "2"], working_dir=ROOT, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert ("finetune: error: the cluster can never run train workers: 2 x (CPU 1) and one decode task "
            "(CPU 0.5) at once (1 node (CPU 2); no autoscaler): at most 1 fit beside one decode task; "
            f"{TRAIN_FLAGS}") in out, out[-3000:]
    assert "failed with exit code 2" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "summary.json").exists()


def test_embedding_that_can_never_fit_fails_at_once_in_one_line(ray_head, tiny_model, tmp_path, rsicd_files):
    archive = tmp_path / "chips"
    archive.mkdir()
    for f in rsicd_files[:3]:
        (archive / f.name).write_bytes(f.read_bytes())
    res = ray_head.submit(["python", EMBED, "--archive", str(archive), "--db", str(tmp_path / "db"),
                           "--model", str(tiny_model), "--gpus-per-actor", "1"], working_dir=ROOT, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "embed_archive: error: the cluster can never run embedder actors: 1 x (CPU 1, GPU 1)" in out, out[-3000:]
    assert f"not one fits beside one read task; {EMBED_FLAGS}" in out
    assert "failed with exit code 2" in out and "Traceback" not in out


@pytest.fixture
def private_ray():
    """A private 2-CPU Ray in this process (its GCS takes an autoscaler's report like any cluster's)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow  # a Ray instance
def test_fit_counts_the_node_types_the_autoscaler_may_add(private_ray):
    """An autoscaler reports its node types to the GCS (the ClusterConfig Ray Data reads too): a GPU pool
    that no node has yet is fine while the autoscaler can add enough GPU nodes, refused beyond that."""
    from ray.core.generated import autoscaler_pb2

    with pytest.raises(ClusterUnfit, match=r"1 node \(CPU 2, GPU 0\); no autoscaler\): not one fits"):
        cluster.check_fit(demand(2))
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu_worker", max_count=2)
    group.resources.update({"CPU": 8, "GPU": 1})
    private_ray._private.worker.global_worker.gcs_client.report_cluster_config(config.SerializeToString())
    cluster.check_fit(demand(2))
    with pytest.raises(ClusterUnfit, match=r"up to 2 gpu_worker \(CPU 8, GPU 1\)\): at most 2 fit beside one "
                                           r"read task; change --num-actors"):
        cluster.check_fit(demand(3))
    config.max_resources["GPU"] = 1
    private_ray._private.worker.global_worker.gcs_client.report_cluster_config(config.SerializeToString())
    with pytest.raises(ClusterUnfit, match="over the cluster's maximum GPU 1"):
        cluster.check_fit(demand(2))


# ---------------------------------------------------------------- nodes that cannot reach the store


def upload_chips(s3, files, prefix: str) -> str:
    client = s3.client()
    key = prefix.split("/", 3)[3]
    for f in files:
        client.upload_file(str(f), BUCKET, f"{key}/chips/{f.name}")
    return f"{prefix}/chips"


def test_nodes_without_the_drivers_credentials_stop_the_job_early(s3, s3_prefix, tiny_model, tmp_path,
                                                                  rsicd_files):
    """A plain driver with RAY_ADDRESS and the AWS variables, on a cluster whose nodes were started without
    them: one line naming the cause and the fix, before any read task dies of NoCredentialsError."""
    archive = upload_chips(s3, rsicd_files[:3], s3_prefix)
    with RayHead(num_cpus=2, inherit_aws=False) as head:
        env = {**os.environ, **head.auth_env, "RAY_ADDRESS": head.address}
        res = subprocess.run([sys.executable, EMBED, "--archive", archive, "--db", str(tmp_path / "db"),
                              "--model", str(tiny_model)], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=400)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("embed_archive: error: node ") and f"{archive}: " in last, last
    assert "credentials" in last and "start every Ray node with the driver's AWS variables" in last, last
    assert "Traceback" not in res.stderr and "NoCredentialsError" not in res.stderr.replace(last, "")


# ---------------------------------------------------------------- a read stage that never returns


class SilentObjectReads:
    """An S3 endpoint in front of SeaweedFS that forwards every request except object reads, which it
    accepts and never answers (a store that hangs mid-read). Each forwarded exchange uses a fresh upstream
    connection and asks both sides to close it afterwards."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _closing(head: bytes) -> bytes:
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        path = target.split(b"?", 1)[0]
        if method == b"GET" and b"/" in path.strip(b"/"):
            self.held.append(conn)  # GET /bucket/key: an object read, left hanging
            return
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        with socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
            up.sendall(self._closing(head) + body)
            response = b""
            while chunk := up.recv(65536):
                response += chunk
        reply_head, _, reply_body = response.partition(b"\r\n\r\n")
        conn.sendall(self._closing(reply_head) + reply_body)
        conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_read_stage_that_never_returns_is_reported_then_stopped(s3, s3_prefix, tiny_model, tmp_path,
                                                                   rsicd_files):
    archive = upload_chips(s3, rsicd_files[:4], s3_prefix)
    silent = SilentObjectReads(s3.s3_port)
    env = {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.port}",
           "AWS_S3_ENDPOINT": f"127.0.0.1:{silent.port}"}
    try:
        with RayHead(num_cpus=2, env=env) as head:
            res = head.submit(["python", EMBED, "--archive", archive, "--db", str(tmp_path / "db"),
                               "--model", str(tiny_model), "--read-tasks", "1", "--stall-timeout", "4",
                               "--stall-abort", "20"], working_dir=ROOT, timeout=400)
    finally:
        silent.close()
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    reports = [line for line in out.splitlines() if "embedding has made no progress for" in line]
    assert reports, out[-3000:]
    # the report names the stuck stage: a read stage with a task running, and what the driver waits for
    assert any("driver: waiting for the pipeline's first batch" in r and
               any(f"{stage}" in r for stage in ("plan_files", "read_tiles")) and " running (oldest " in r
               for r in reports), reports
    assert "embed_archive: error: embedding made no progress for" in out and "and was stopped" in out, out[-3000:]
    assert "failed with exit code 2" in out and "Traceback" not in out
