"""The Ray driver a run belongs to, and whether that driver is gone (a run killed with kill -9).

A run's heartbeat (:class:`rsclip.table.fragments.RunRecords`) names its driver: the Ray session (one per
cluster start) and the job id. A later run connected to the same cluster asks the cluster whether that job is
dead, so what a killed driver wrote and never committed is removed at once instead of after its heartbeat
has aged; a driver of another cluster, or one the cluster cannot say anything about, is judged by its
heartbeat alone.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def driver_identity() -> dict[str, str]:
    """``{"ray_session": ..., "ray_job": ...}`` of this process's Ray driver; ``{}`` without Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        context = ray.get_runtime_context()
        return {"ray_session": str(ray._private.worker._global_node.session_name),
                "ray_job": context.get_job_id()}
    except Exception as exc:  # no identity: the heartbeat's age decides for this run
        log.debug("no Ray driver identity: %s", exc)
        return {}


def driver_gone(identity: dict) -> bool:
    """Whether the driver ``identity`` names ran on the cluster this process is connected to and its job is
    dead there (False whenever that cannot be told)."""
    mine = driver_identity()
    if not mine or identity.get("ray_session") != mine["ray_session"] or not identity.get("ray_job"):
        return False
    try:
        from ray._private import state

        return any(j["JobID"] == identity["ray_job"] and j["IsDead"] for j in state.jobs())
    except Exception as exc:
        log.debug("cannot ask the cluster about job %s: %s", identity.get("ray_job"), exc)
        return False
