"""Ray start-up for every job, in one place: join the cluster a job was submitted to, or start a private one.

A bare ``ray.init()`` joins the most recent ``ray start`` on the machine, which on a shared host is someone
else's cluster; :func:`start_ray` joins only the address it is given (``RAY_ADDRESS`` under ``ray job
submit``) and otherwise starts a private local instance bound to 127.0.0.1. No secret travels in a
``runtime_env`` (the dashboard and ``ray list`` show it): nodes read the store with their own environment or
role (:mod:`rsclip.core.storage`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOCAL = "local"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def submitted_job() -> bool:
    """True inside a job started by ``ray job submit`` (its workers already have the working dir)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def code_runtime_env() -> dict | None:
    """The runtime env that ships the rsclip package to workers, or None when ``ray job submit`` did."""
    if submitted_job():
        return None
    return {"py_modules": [str(PACKAGE_DIR)]}


def job_address() -> str | None:
    """The cluster a job should use: ``RAY_ADDRESS`` (set by ``ray job submit`` or the user), else None."""
    return os.environ.get("RAY_ADDRESS") or None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_ray(address: str | None = None, *, runtime_env: dict | None = None, log_to_driver: bool = True) -> str:
    """Connect to the Ray cluster at ``address``, or start a private local instance; returns its address.

    Does nothing but return the address when Ray is already initialised in this process. For a private
    instance the GCS port is chosen here and exported as ``RAY_ADDRESS`` to the processes Ray starts: Ray
    Train's helper actors look the cluster up through the state API, which otherwise picks "the latest
    cluster" on the host.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    env = dict(runtime_env or code_runtime_env() or {})
    if address and address != LOCAL:
        env_vars = {**env.get("env_vars", {}), "RAY_ADDRESS": address}
        ray.init(address=address, runtime_env={**env, "env_vars": env_vars}, log_to_driver=log_to_driver)
        return address
    port = _free_port()
    address = f"{LOOPBACK}:{port}"
    # Ray's own setting for the head's GCS port, and the address every process it starts inherits; set only
    # while the local instance starts, so this process's environment is left as it was
    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    os.environ.update(RAY_GCS_SERVER_PORT=str(port), RAY_ADDRESS=address)
    try:
        ray.init(address=LOCAL, runtime_env=env or None, log_to_driver=log_to_driver,
                 _node_ip_address=LOOPBACK)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return address
