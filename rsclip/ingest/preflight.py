"""The embedding job's preflight: what it checks on the cluster before its pipeline starts.

So the job fails in seconds with one line instead of hanging or dying in a long Ray traceback:

- :func:`embed_demand`: the embedder actors and one read task, for :func:`rsclip.runtime.cluster.check_fit`
  (a pool that can never be placed, or that leaves no room for reading, would wait forever);
- :func:`check_workers`: every node reads the archive's and the table store's buckets as the driver did
  (nodes started without the AWS variables or a role would fail every read task with NoCredentialsError).
"""

from __future__ import annotations

from rsclip.geo import stacked
from rsclip.runtime import cluster, storage
from rsclip.errors import NotFound
from rsclip.ingest import listing
from rsclip.ingest.config import EmbedConfig

# Stores of a STAC run's sources probed from every node (the first ones found).
MAX_STORES = 8
# The flags that size what the embedding job asks of the cluster.
RESOURCE_FLAGS = "--num-actors, --cpus-per-actor, --gpus-per-actor or --read-cpus"
WORKER_STORE_HINT = ("the driver can: start every Ray node with the driver's AWS variables or give the nodes a "
                     "role that can read it (see README, Scaling out); a local archive needs one machine or a "
                     "shared folder")


def embed_demand(config: EmbedConfig, actor_cpus: float, read_memory: int) -> cluster.Demand:
    """The embedder actor pool (``actor_cpus`` each, the CPUs the pipeline really reserves) and one read task."""
    bundle = {"CPU": actor_cpus, **({"GPU": config.gpus_per_actor} if config.gpus_per_actor else {})}
    read = {"CPU": config.read_cpus, "memory": float(read_memory)}
    return cluster.Demand("embedder actors", config.num_actors, bundle, "read task", read, RESOURCE_FLAGS)


def reach_stores(uris: list[str]) -> None:
    """On a node: raise unless every ``uri``'s bucket answers (``s3://``) or its folder exists (local)."""
    for uri in uris:
        if storage.is_remote(uri):
            listing.check_bucket(uri)
        elif not storage.local_path(uri).exists():
            raise NotFound(f"{uri} does not exist on this node")


def source_stores(files, most: int = MAX_STORES) -> list[str]:
    """Where the sources of a STAC run lie, one uri per store: ``s3://`` buckets and local folders (at most
    ``most``; HTTP(S) servers are not probed)."""
    found: dict[str, str] = {}
    for f in files:
        if f.problem:
            continue
        for uri in stacked.stack_parts(f.uri) if stacked.is_stack(f.uri) else [f.uri]:
            if storage.is_remote(uri):
                found.setdefault(uri.split("/", 3)[2], uri)
            elif not storage.is_http(uri):
                found.setdefault(storage.parent(uri), storage.parent(uri))
        if len(found) >= most:
            break
    return list(found.values())[:most]


def check_workers(config: EmbedConfig, files=()) -> None:
    """Raise the first store fault a node of the cluster meets on the archive (or the stores of the listed
    STAC ``files``) or the table store, naming the node and the fix (:func:`rsclip.runtime.cluster.check_nodes`).
    A local table store is checked only on the driver: it may not exist before the run creates it."""
    sources = [config.archive] if config.archive is not None else source_stores(files)
    uris = sources + ([config.db] if storage.is_remote(config.db) else [])
    cluster.check_nodes(reach_stores, uris, hint=WORKER_STORE_HINT)
