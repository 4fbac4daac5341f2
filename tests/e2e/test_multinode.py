"""The jobs on a multi-node Ray cluster, on one machine: Ray's own multi-node test cluster
(``ray.cluster_utils.Cluster``) with a CPU head and two worker nodes that each advertise one GPU, the shape of
cluster.yaml's head and ``gpu_worker`` nodes (the GPU is a scheduling resource here; torch runs on the CPU).

- every node reaches S3 through the same AWS variables;
- the embedding job puts its actors (one GPU each) on different nodes and, when a worker node is killed
  mid-run (as the job commits its first tiles), still leaves exactly the archive's tile set in the table:
  no tile lost, none twice;
- fine-tuning runs 2 Ray Train workers on 2 nodes and, when one of those nodes is killed as soon as the job
  reports the first epoch's checkpoint registered, restarts from that checkpoint and finishes.

A killed node is replaced by a fresh one, as the autoscaler replaces a reclaimed spot node. Nodes are kept
small (1-2 CPUs, 300 MB object stores); the cluster is started once for the module.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
from PIL import Image
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from infra.local_stack import free_port
from rsclip.runtime import storage
from rsclip.table import tiles
from rsclip.model.clip import load_model
from rsclip.train.driver import REGISTERED
from tests.helpers import BUCKET, ROOT, RSICD_DIR, RSICD_IMAGES
from tests.helpers.job_logs import run_streaming

pytestmark = pytest.mark.slow

NODE_STORE = 300_000_000
GPU_NODE = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": NODE_STORE}
# How long a job may take here before the test gives up (the machine is shared and slow; never asserted).
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster(s3):
    """A head (1 CPU, no GPU) and two GPU worker nodes (2 CPUs, 1 GPU), with this process as the driver."""
    head_args = {"num_cpus": 1, "object_store_memory": NODE_STORE, "include_dashboard": True,
                 "dashboard_host": "127.0.0.1", "dashboard_port": free_port()}
    c = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        for _ in range(2):
            c.add_node(**GPU_NODE)
        c.wait_for_nodes()
        # the nodes inherit the S3 server's AWS variables from this process (no secret in a runtime_env)
        env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
               # Ray Train's helper processes look the cluster up by address: never someone else's Ray
               "RAY_ADDRESS": c.address}
        context = ray.init(address=c.address, runtime_env={"env_vars": env}, log_to_driver=False)
        # the state API must ask this cluster's dashboard, not whichever Ray on the machine started last
        c.dashboard_address = f"http://{context.dashboard_url}"
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def worker_nodes(c: Cluster) -> list:
    return list(c.worker_nodes)  # remove_node drops a node from this set


def ensure_gpu_workers(c: Cluster, count: int) -> None:
    """Add GPU worker nodes until ``count`` are alive (what the autoscaler does after losing one)."""
    while len(worker_nodes(c)) < count:
        c.add_node(**GPU_NODE)
    c.wait_for_nodes()


def kill_and_replace(c: Cluster, node_id: str):
    """Kill the worker node with Ray node id ``node_id`` without warning (a reclaimed spot instance), then
    start a replacement node."""
    [node] = [n for n in worker_nodes(c) if n.node_id == node_id]
    c.remove_node(node, allow_graceful=False)
    ensure_gpu_workers(c, 2)


def run_in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread; returns (thread, result dict with 'value' or 'error')."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # re-raised by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def finish(thread: threading.Thread, out: dict):
    thread.join(JOB_TIMEOUT_S)
    assert not thread.is_alive(), f"the job did not finish within {JOB_TIMEOUT_S}s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def upload(s3, files: list[Path], prefix: str) -> None:
    """Copy local files to ``prefix/<name>`` in the test bucket, 16 at a time."""
    key = prefix.split("/", 3)[3]
    client = s3.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda f: client.upload_file(str(f), BUCKET, f"{key}/{f.name}"), files))


def alive_actor_nodes(c: Cluster, class_fragment: str) -> dict[str, str]:
    """``{actor_id: node_id}`` of alive actors whose class name contains ``class_fragment``."""
    from ray.util.state import list_actors

    actors = list_actors(address=c.dashboard_address, filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.actor_id: a.node_id for a in actors if class_fragment in a.class_name}


def test_every_node_reaches_s3_with_the_same_aws_variables(cluster, s3, s3_prefix):
    @ray.remote(num_cpus=0)
    def write_marker(prefix: str) -> tuple[str, str]:
        import os

        node = ray.get_runtime_context().get_node_id()
        fs, path = storage.filesystem(f"{prefix}/{node}")
        with fs.open(path, "wb") as f:
            f.write(node.encode())
        return node, os.environ["AWS_ENDPOINT_URL"]

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3
    results = ray.get([
        write_marker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(s3_prefix)
        for n in nodes
    ])
    assert sorted(node for node, _ in results) == sorted(nodes)
    assert {endpoint for _, endpoint in results} == {s3.endpoint}
    fs, root = storage.filesystem(s3_prefix)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root, refresh=True)) == sorted(nodes)


def build_small_clip(path: Path) -> Path:
    """A tiny CLIP with 32-px input: 2,100 tiles' pixels then fit the 300 MB object stores many times over."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from rsclip.testing import build_tokenizer

    tok = build_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, max_position_embeddings=77, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_embedding_spreads_actors_and_loses_no_tile_when_a_node_dies(cluster, s3, s3_prefix, tmp_path,
                                                                    rsicd_files):
    from rsclip.ingest.config import EmbedConfig
    from rsclip.ingest.pipeline import run_embedding

    ensure_gpu_workers(cluster, 2)
    # more chips than one 1,024-tile planning bundle, so several read tasks and both actors get work
    files = rsicd_files[:1100]
    archive = f"{s3_prefix}/archive"
    upload(s3, files, archive)
    model = f"{s3_prefix}/model"
    model_dir = build_small_clip(tmp_path / "small-clip")
    upload(s3, sorted(p for p in model_dir.iterdir() if p.is_file()), model)
    expected = set()
    for f in files:
        with Image.open(f) as im:
            expected.add(tiles.tile_id(f"{archive}/{f.name}", 0, 0, *im.size))
    db = f"{s3_prefix}/db"
    config = EmbedConfig(archive=archive, db=db, model=model, batch_size=32, num_actors=2, gpus_per_actor=1,
                         cpus_per_actor=1, commit_rows=64, index="never")

    placements: dict[str, str] = {}
    killed, seen = [], []
    head = cluster.head_node.node_id
    # Workers write and the driver commits afterwards, so commits trail the embedders: watch the actors
    # themselves and kill a node holding one while the job runs (Ray adds nodes from the main thread only).
    # The job reads no tile before both embedders have started, so both are seen before it can end.
    thread, out = run_in_thread(run_embedding, config)
    while thread.is_alive() and not killed:
        alive = alive_actor_nodes(cluster, "ImageEmbedder")
        placements.update(alive)
        on_workers = {n for n in alive.values() if n != head}
        seen.append(len(on_workers))
        if len(on_workers) == 2:
            killed.append(sorted(on_workers)[0])
            kill_and_replace(cluster, killed[0])
        time.sleep(0.2)
    summary = finish(thread, out)

    assert killed, f"the job ended before its embedders were on both worker nodes (actor nodes seen: {seen})"
    actor_nodes = set(placements.values())
    assert len(actor_nodes) >= 2 and head not in actor_nodes, "embedder actors belong on the GPU nodes"
    table = tiles.open_table(db, tiles.DEFAULT_TABLE)
    ids = table.to_arrow().column(tiles.ID).to_pylist()
    assert len(ids) == len(set(ids)), "a tile was written twice"
    assert set(ids) == expected, f"{len(expected - set(ids))} tiles lost, {len(set(ids) - expected)} unexpected"
    assert summary.failed == 0
    assert tiles.open_table(db, tiles.errors_table_name(tiles.DEFAULT_TABLE)).count_rows() == 0


def rsicd_subset(train: int, val: int) -> dict:
    """RSICD entries: ``train`` training images from different classes and ``val`` validation images."""
    images = json.loads((RSICD_DIR / "dataset_rsicd.json").read_text())["images"]
    by_split = {s: [i for i in images if i["split"] == s] for s in ("train", "val")}
    pick = lambda rows, n: rows[:: max(1, len(rows) // n)][:n]  # noqa: E731
    return {"images": pick(by_split["train"], train) + pick(by_split["val"], val)}


def read_history(output: str) -> list[dict]:
    fs, path = storage.filesystem(f"{output}/metrics.jsonl")
    fs.invalidate_cache()
    if not fs.exists(path):
        return []
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]


def train_placement_groups() -> list[dict]:
    """Ray Train's worker-group placement groups (two bundles each), oldest first."""
    table = ray.util.placement_group_table()
    return [pg for pg in table.values() if len(pg["bundles"]) == 2]


def test_finetune_two_workers_on_two_nodes_resumes_from_checkpoint_after_node_loss(cluster, s3, s3_prefix,
                                                                                  tiny_model):
    """The job joins the cluster as its own driver; one of the two worker nodes is killed as soon as the job
    reports epoch 1's checkpoint registered (an event of the run, not a timer), and the run resumes there."""
    ensure_gpu_workers(cluster, 2)
    data = f"{s3_prefix}/rsicd"
    subset = rsicd_subset(train=16, val=6)
    upload(s3, [RSICD_IMAGES / i["filename"] for i in subset["images"]], f"{data}/RSICD_images")
    fs, path = storage.filesystem(f"{data}/dataset_rsicd.json")
    fs.pipe_file(path, json.dumps(subset).encode())
    output = f"{s3_prefix}/run"
    # 2 CPUs per worker: each worker fills one worker node, so the two land on two nodes
    args = ["--data", data, "--output", output, "--model", str(tiny_model), "--num-workers", "2",
            "--cpus-per-worker", "2", "--data-cpus", "0.5", "--epochs", "3", "--batch-size", "4",
            "--warmup-steps", "1", "--shuffle-buffer", "0", "--max-failures", "3", "--seed", "0",
            "--address", cluster.address]
    env = {**os.environ, **s3.env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    groups_before = {pg["placement_group_id"] for pg in train_placement_groups()}
    registered = re.compile(REGISTERED.format(name=r"(epoch0001-\S+)"))
    seen: dict = {}

    def kill_a_node_after_epoch_one(line: str) -> None:
        if "killed" in seen or not registered.search(line) or "partial" in line:
            return
        live = [pg for pg in train_placement_groups()
                if pg["placement_group_id"] not in groups_before and pg["state"] == "CREATED"]
        assert len(live) == 1, f"expected the one live worker group of the run, found {live}"
        seen["nodes"] = set(live[0]["bundles_to_node_id"].values())
        seen["first_epoch"] = read_history(output)[0]
        seen["killed"] = sorted(seen["nodes"])[0]
        kill_and_replace(cluster, seen["killed"])

    status, lines = run_streaming([sys.executable, "jobs/finetune.py", *args], env=env, cwd=ROOT,
                                  timeout=JOB_TIMEOUT_S, on_line=kill_a_node_after_epoch_one)
    assert status == 0, "".join(lines[-60:])
    assert "killed" in seen, "the job reported no registered epoch-1 checkpoint: " + "".join(lines[-60:])
    assert len(seen["nodes"]) == 2 and cluster.head_node.node_id not in seen["nodes"], "2 workers on 2 worker nodes"
    # the failure was real: Ray Train built a new worker group after losing the node
    groups = [pg for pg in train_placement_groups() if pg["placement_group_id"] not in groups_before]
    assert len(groups) >= 2
    history = read_history(output)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # resumed, not restarted: epoch 1's record (its wall-clock throughput included) came back from the
    # checkpoint unchanged; a run started over would have trained and timed epoch 1 again
    assert history[0] == seen["first_epoch"]
    assert any("resumed at epoch 1" in line for line in lines), "".join(lines[-60:])
    summary = json.loads(next(line for line in reversed(lines) if line.startswith("{")))  # Ray may log after it
    assert summary["final_metrics"]["step"] == summary["total_steps_planned"]
    assert summary["model"] == f"{output}/model"
    load_model(f"{output}/model", device="cpu")  # the best checkpoint's model was exported, and loads
