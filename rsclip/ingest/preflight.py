"""What the embedding job checks on the cluster before its pipeline starts, so that it fails in seconds
with one line instead of hanging or dying in a long Ray traceback.

- :func:`embed_demand`: the embedder actors and one read task, for :func:`rsclip.core.cluster.check_fit`
  (a pool that can never be placed, or that leaves no room for reading, would wait forever);
- :func:`check_workers`: every node reads the archive's and the table store's buckets as the driver did
  (nodes started without the AWS variables or a role would fail every read task with NoCredentialsError).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsclip.core import cluster, storage
from rsclip.errors import NotFound
from rsclip.ingest import listing

if TYPE_CHECKING:
    from rsclip.ingest.pipeline import EmbedConfig

# The flags that size what the embedding job asks of the cluster.
RESOURCE_FLAGS = "--num-actors, --cpus-per-actor, --gpus-per-actor or --read-cpus"
WORKER_STORE_HINT = ("the driver can: start every Ray node with the driver's AWS variables or give the nodes a "
                     "role that can read it (see README, Scaling out); a local archive needs one machine or a "
                     "shared folder")


def embed_demand(config: "EmbedConfig", actor_cpus: float, read_memory: int) -> cluster.Demand:
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


def check_workers(config: "EmbedConfig") -> None:
    """Raise the first store fault a node of the cluster meets on the archive or the table store, naming the
    node and the fix (:func:`rsclip.core.cluster.check_nodes`). A local table store is checked only on the
    driver: it may not exist before the run creates it."""
    uris = [config.archive] + ([config.db] if storage.is_remote(config.db) else [])
    cluster.check_nodes(reach_stores, uris, hint=WORKER_STORE_HINT)
