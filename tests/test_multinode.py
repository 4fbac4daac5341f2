"""The jobs on a multi-node Ray cluster, on one machine: Ray's own multi-node test cluster
(``ray.cluster_utils.Cluster``) with a CPU head and two worker nodes that each advertise one GPU, the shape of
cluster.yaml's head and ``gpu_worker`` nodes (the GPU is a scheduling resource here; torch runs on the CPU).

- every node reaches S3 through the same AWS variables;
- the embedding job puts its actors (one GPU each) on different nodes and, when a worker node is killed
  mid-run, still leaves exactly the archive's tile set in the table: no tile lost, none twice;
- fine-tuning runs 2 Ray Train workers on 2 nodes and, when one of those nodes is killed after the first
  checkpoint, restarts from that checkpoint and finishes.

A killed node is replaced by a fresh one, as the autoscaler replaces a reclaimed spot node. Nodes are kept
small (1-2 CPUs, 300 MB object stores); the cluster is started once for the module.
"""

from __future__ import annotations

import json
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
from rsclip.core import storage, tiles
from tests.helpers import BUCKET, RSICD_DIR, RSICD_IMAGES

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
        env = {**s3.env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
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
    from rsclip.ingest.pipeline import EmbedConfig, run_embedding
    from rsclip.ingest.writer import errors_table_name

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

    thread, out = run_in_thread(run_embedding, config)
    placements: dict[str, str] = {}
    killed, seen = None, []
    head = cluster.head_node.node_id
    while thread.is_alive() and killed is None:
        time.sleep(0.5)
        placements.update(alive_actor_nodes(cluster, "ImageEmbedder"))
        try:
            rows = tiles.open_table(db, tiles.DEFAULT_TABLE).count_rows()
        except Exception:  # the table is not there yet
            rows = 0
        on_workers = {n for n in placements.values() if n != head}
        seen.append((rows, len(on_workers)))
        if 0 < rows < len(expected) and len(on_workers) == 2:
            killed = sorted(on_workers)[0]
            kill_and_replace(cluster, killed)
    summary = finish(thread, out)

    assert killed is not None, f"the run ended before a node could be killed mid-run: (rows, actor nodes) {seen}"
    actor_nodes = set(placements.values())
    assert len(actor_nodes) >= 2 and head not in actor_nodes, "embedder actors belong on the GPU nodes"
    table = tiles.open_table(db, tiles.DEFAULT_TABLE)
    ids = table.to_arrow().column(tiles.ID).to_pylist()
    assert len(ids) == len(set(ids)), "a tile was written twice"
    assert set(ids) == expected, f"{len(expected - set(ids))} tiles lost, {len(set(ids) - expected)} unexpected"
    assert summary.failed == 0
    assert tiles.open_table(db, errors_table_name(tiles.DEFAULT_TABLE)).count_rows() == 0


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


def registered_checkpoint(output: str) -> str:
    """Name of the latest checkpoint Ray Train has registered (its snapshot in storage), or "".

    A checkpoint folder appears in storage before the controller registers it; a worker lost in between
    restarts the run without it. The snapshot is written after registration, so it is the safe signal.
    """
    fs, path = storage.filesystem(f"{output}/ray/run/checkpoint_manager_snapshot.json")
    fs.invalidate_cache()
    try:
        snapshot = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return ""
    latest = snapshot.get("latest_checkpoint_result") or {}
    return str(latest.get("checkpoint_dir_name") or "")


def train_placement_groups() -> list[dict]:
    """Ray Train's worker-group placement groups (two bundles each), oldest first."""
    table = ray.util.placement_group_table()
    return [pg for pg in table.values() if len(pg["bundles"]) == 2]


def test_finetune_two_workers_on_two_nodes_resumes_from_checkpoint_after_node_loss(cluster, s3, s3_prefix,
                                                                                  tiny_model):
    from rsclip.train.loop import TrainConfig
    from rsclip.train.loop import run as run_training

    ensure_gpu_workers(cluster, 2)
    data = f"{s3_prefix}/rsicd"
    subset = rsicd_subset(train=16, val=6)
    upload(s3, [RSICD_IMAGES / i["filename"] for i in subset["images"]], f"{data}/RSICD_images")
    fs, path = storage.filesystem(f"{data}/dataset_rsicd.json")
    fs.pipe_file(path, json.dumps(subset).encode())
    output = f"{s3_prefix}/run"
    # 2 CPUs per worker: each worker fills one worker node, so the two land on two nodes
    config = TrainConfig(data=[data], output=output, model=str(tiny_model), num_workers=2, cpus_per_worker=2,
                         data_cpus=0.5, epochs=2, batch_size=4, warmup_steps=1, shuffle_buffer=0,
                         max_failures=3, seed=0)
    groups_before = {pg["placement_group_id"] for pg in train_placement_groups()}

    thread, out = run_in_thread(run_training, config)
    first_epoch, killed, nodes_used = None, None, set()
    while thread.is_alive() and killed is None:
        time.sleep(0.3)
        latest = registered_checkpoint(output)
        if not (latest.startswith("epoch0001-") and "partial" not in latest):
            continue
        history = read_history(output)
        live = [pg for pg in train_placement_groups()
                if pg["placement_group_id"] not in groups_before and pg["state"] == "CREATED"]
        assert len(live) == 1, f"expected the one live worker group of the run, found {live}"
        nodes_used = set(live[0]["bundles_to_node_id"].values())
        first_epoch = history[0]
        killed = sorted(nodes_used)[0]
        kill_and_replace(cluster, killed)
    summary = finish(thread, out)

    assert killed is not None, "training ended before a node could be killed"
    assert len(nodes_used) == 2 and cluster.head_node.node_id not in nodes_used, "2 workers on 2 worker nodes"
    # the failure was real: Ray Train built a new worker group after losing the node
    groups = [pg for pg in train_placement_groups() if pg["placement_group_id"] not in groups_before]
    assert len(groups) >= 2
    history = read_history(output)
    assert [r["epoch"] for r in history] == [1, 2]
    # resumed, not restarted: epoch 1's record (its wall-clock throughput included) came back from the
    # checkpoint unchanged; a run started over would have trained and timed epoch 1 again
    assert history[0] == first_epoch
    assert summary["final_metrics"]["step"] == summary["total_steps_planned"]
    assert summary["model"] == f"{output}/model"
    fs, path = storage.filesystem(f"{output}/model/config.json")
    assert fs.exists(path), "the best checkpoint's model was exported"
