"""Ray for every job, in one place: start-up, what the cluster can ever run, per-node checks, a stall watchdog.

- :func:`start_ray` joins only the address it is given (``RAY_ADDRESS`` under ``ray job submit``) and
  otherwise starts a private instance bound to 127.0.0.1; a bare ``ray.init()`` would join the latest
  ``ray start`` on the machine, on a shared host someone else's cluster. No secret travels in a
  ``runtime_env`` (:func:`refuse_secrets`): the dashboard and ``ray list --detail`` show it to anyone who can
  reach the cluster, so nodes read the store with their own environment or role (:mod:`rsclip.runtime.storage`).
- :func:`check_fit` compares what a job asks for (:class:`Demand`: actors or train workers plus one data
  task beside them) with the nodes the cluster has and the node types its autoscaler may add, and raises
  :class:`~rsclip.errors.ClusterUnfit` naming the flags to change, where Ray would wait forever.
- :func:`check_nodes` runs a check (can this node read the archive?) on every node before the work starts.
- :mod:`rsclip.runtime.watchdog` says on the console which stage has stopped making progress, and stops the run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import re
import socket
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from rsclip.errors import ClusterUnfit, InvalidInput, RsclipError
from rsclip.runtime.reporting import one_line

log = logging.getLogger(__name__)

LOCAL = "local"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# runtime_env contents that are secrets: variable names, and URLs with a password (remote working_dir/py_modules)
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)
_URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# Seconds to wait for the autoscaler's first status after start-up (it writes one every few seconds).
AUTOSCALER_STATUS_WAIT_S = 10.0
# Where `ray up` leaves the autoscaler's config on the head (read when the GCS has no node types).
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")
# Seconds every node gets for a check: the store's connect/read timeouts and retries fit well inside.
NODE_CHECK_TIMEOUT_S = 180.0
# The driver's C++ log level on a quiet start (start_ray): "fatal" leaves out ERROR lines, of which a
# successful Ray Data run prints one false alarm per actor pool (ray-project/ray#57733: Ray Data passes the
# actors' constructor arguments through the object store); Python errors stay on the console.
QUIET_BACKEND_LOG_LEVEL = "fatal"
_EPS = 1e-6


# ---------------------------------------------------------------- start-up


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


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def refuse_secrets(runtime_env: Mapping[str, Any] | None) -> None:
    """Raise :class:`~rsclip.errors.InvalidInput` when ``runtime_env`` carries a secret: an ``env_vars`` name
    like ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` or ``*PASSWORD*``, or a URL with credentials."""
    env = dict(runtime_env or {})
    names = sorted(k for k in (env.get("env_vars") or {}) if _SECRET_NAME.search(k))
    if names or any(_URL_CREDENTIALS.search(s) for s in _strings(env)):
        what = ", ".join(names) or "a URL with credentials"
        raise InvalidInput(f"refusing to put {what} in a Ray runtime_env (the dashboard and `ray list` show it): "
                           "give the nodes their own AWS variables or a role instead")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environment(updates: Mapping[str, str]):
    """``os.environ`` with ``updates`` while the block runs, as it was after."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_ray_data() -> None:
    """Ray Data's console lines (start/finish of each dataset, "progress bars disabled") down to its errors;
    its log file in the session folder keeps everything."""
    importlib.import_module("ray.data")  # it configures its loggers on import

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.ERROR)


@contextlib.contextmanager
def _no_fork_warning():
    """Without LanceDB's "fork support is experimental" warning, which its at-fork hook prints in each child
    that Ray's process launch forks (with a ``preexec_fn``) once LanceDB is imported: that child runs exec at
    once, so no LanceDB state is used in it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
        yield


def start_ray(address: str | None = None, *, runtime_env: dict | None = None, log_to_driver: bool = True,
              quiet: bool = False) -> str:
    """Connect to the Ray cluster at ``address``, or start a private local instance; returns its address.

    Does nothing but return the address when Ray is already initialised in this process. For a private
    instance the GCS port is chosen here and exported as ``RAY_ADDRESS`` to the processes Ray starts: Ray
    Train's helper actors look the cluster up through the state API, which otherwise picks "the latest
    cluster" on the host. Raises :class:`~rsclip.errors.InvalidInput` for a ``runtime_env`` with a secret.

    ``quiet`` keeps Ray's own console lines to its errors: the ``ray`` and ``ray.data`` loggers at ERROR, and
    the driver's C++ core worker at :data:`QUIET_BACKEND_LOG_LEVEL` (unless ``RAY_BACKEND_LOG_LEVEL`` is set;
    a private instance's daemons start with it too). Everything still goes to the session's log files.
    """
    import ray

    refuse_secrets(runtime_env)
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    env = dict(runtime_env or code_runtime_env() or {})
    options = {"log_to_driver": log_to_driver, "logging_level": logging.ERROR if quiet else logging.INFO}
    backend = {"RAY_BACKEND_LOG_LEVEL": QUIET_BACKEND_LOG_LEVEL} if quiet and not os.environ.get(
        "RAY_BACKEND_LOG_LEVEL") else {}
    if address and address != LOCAL:
        env_vars = {**env.get("env_vars", {}), "RAY_ADDRESS": address}
        with _environment(backend):
            ray.init(address=address, runtime_env={**env, "env_vars": env_vars}, **options)
    else:
        port = _free_port()
        address = f"{LOOPBACK}:{port}"
        # Ray's own setting for the head's GCS port, and the address every process it starts inherits; set
        # only while the local instance starts, so this process's environment is left as it was
        with _environment({**backend, "RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": address}), \
                _no_fork_warning():
            ray.init(address=LOCAL, runtime_env=env or None, _node_ip_address=LOOPBACK, **options)
    if quiet:
        _quiet_ray_data()
    return address


# ---------------------------------------------------------------- what the cluster can ever run


@dataclass(frozen=True)
class Demand:
    """What a job holds at once: ``count`` x ``bundle`` (its actors or train workers, ``what``) and one
    ``task`` beside them (a data task, ``task_what``; empty when the bundles are the data tasks), without
    which no data flows. ``flags`` names the flags that set these numbers, for the error message."""

    what: str
    count: int
    bundle: Mapping[str, float]
    task_what: str
    task: Mapping[str, float]
    flags: str


@dataclass(frozen=True)
class NodeShape:
    """The resources of one kind of node and how many such nodes there are or may be (None: no limit)."""

    resources: Mapping[str, float]
    count: int | None
    name: str = ""


def _per_node(capacity: Mapping[str, float], need: Mapping[str, float]) -> float:
    """How many ``need`` bundles one node with ``capacity`` holds (inf when ``need`` asks for nothing)."""
    fits = [math.floor(capacity.get(r, 0.0) / v + _EPS) for r, v in need.items() if v > 0]
    return float(min(fits)) if fits else math.inf


def most_that_fit(demand: Demand, shapes: list[NodeShape]) -> float:
    """The most of ``demand``'s bundles ``shapes`` hold while one node also runs its task (0 if none can)."""
    def total(shape: NodeShape, per: float) -> float:
        return math.inf if shape.count is None and per > 0 else per * (shape.count or 0)

    best = 0.0
    per = [(s, _per_node(s.resources, demand.bundle)) for s in shapes if s.count != 0]
    for host, k in per:
        keys = set(demand.task) | set(demand.bundle)
        left = {r: host.resources.get(r, 0.0) - demand.task.get(r, 0.0) for r in keys}
        if any(v < -_EPS for v in left.values()):
            continue  # this kind of node cannot run the data task
        if math.isinf(k):
            return math.inf
        others = sum(total(s, n) for s, n in per if s is not host) + total(host, k) - k
        best = max(best, others + _per_node(left, demand.bundle))
    return best


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _gcs_node_types() -> tuple[list[NodeShape], dict[str, float]] | None:
    """Node types (and cluster-wide maxima) the autoscaler reported to the GCS, or None when it reported none."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the key: unknown, not fatal
        return None
    if config is None or not config.node_group_configs:
        return None
    types = [NodeShape({k: float(v) for k, v in g.resources.items()}, None if g.max_count < 0 else g.max_count,
                       g.name) for g in config.node_group_configs]
    return types, {k: float(v) for k, v in config.max_resources.items()}


def _autoscaler_status() -> dict | None:
    """The (v1) autoscaler's last status from the GCS, waiting briefly for the first one after start-up."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + AUTOSCALER_STATUS_WAIT_S
    while True:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if raw or time.monotonic() > deadline:
            return json.loads(raw) if raw else None
        time.sleep(0.5)


def _launcher_node_types(names: set[str]) -> list[NodeShape] | None:
    """Node types from the cluster launcher's config on this head, if it names the types the autoscaler uses."""
    path = LAUNCHER_CONFIG.expanduser()
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    types = config.get("available_node_types") or {}
    if not names or not names <= set(types):
        return None  # not this cluster's config
    most = int(config.get("max_workers", 0))
    return [NodeShape({k: float(v) for k, v in (t.get("resources") or {}).items()},
                      1 if name == config.get("head_node_type") else min(int(t.get("max_workers", 0)), most), name)
            for name, t in types.items()]


def autoscaler_node_types() -> tuple[list[NodeShape], dict[str, float]] | None:
    """The node types the connected cluster's autoscaler may add, and cluster-wide maxima.

    ``([], {})`` when there is no autoscaler (a fixed cluster); None when there is one whose node types
    cannot be read. Sources, in order: the ClusterConfig autoscalers report to the GCS (what Ray Data reads),
    the v1 autoscaler's status (node type names; ``node_<id>`` for a fixed cluster) with the launcher's
    config on the head.
    """
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    reported = _gcs_node_types()
    if reported is not None:
        return reported
    if is_autoscaler_v2(fetch_from_server=True):
        return None
    status = _autoscaler_status()
    mapping = ((status or {}).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    if all(kind == f"node_{node}" for node, kind in mapping.items()):
        return [], {}  # no monitor, or one that only mirrors the nodes there are
    types = _launcher_node_types(set(mapping.values()))
    return (types, {}) if types is not None else None


def _describe(resources: Mapping[str, float], keys: Iterable[str]) -> str:
    parts = []
    for key in sorted(keys):
        value = resources.get(key, 0.0)
        parts.append(f"memory {value / 2**30:.3g} GiB" if key == "memory" else f"{key} {value:g}")
    return ", ".join(parts)


def _unfit(demand: Demand, most: float, nodes: list[NodeShape], types: list[NodeShape], over: list[str]) -> str:
    keys = set(demand.bundle) | set(demand.task)
    shapes = Counter(_describe(n.resources, keys) for n in nodes)
    where = [f"{n} node{'s' if n > 1 else ''} ({shape})" for shape, n in shapes.items()]
    where += [f"up to {'any number' if t.count is None else t.count} {t.name or 'node'} "
              f"({_describe(t.resources, keys)})" for t in types]
    beside = f" beside one {demand.task_what}" if demand.task else ""
    if over:
        limit = f"over the cluster's maximum {', '.join(over)}"
    elif most >= 1:
        limit = f"at most {most:g} fit{beside}"
    else:
        limit = f"not one fits{beside}"
    task = f" and one {demand.task_what} ({_describe(demand.task, demand.task)})" if demand.task else ""
    return (f"the cluster can never run {demand.what}: {demand.count} x ({_describe(demand.bundle, demand.bundle)})"
            f"{task} at once ({'; '.join(where) or 'no nodes'}{'' if types else '; no autoscaler'}): {limit}; "
            f"change {demand.flags}")


def check_fit(demand: Demand) -> None:
    """Raise :class:`~rsclip.errors.ClusterUnfit` when the connected cluster can never hold ``demand`` at
    once, neither with its nodes nor with the nodes its autoscaler may add. When the autoscaler's node
    types cannot be read, or Ray is not connected yet, the check is skipped (logged); the
    :class:`~rsclip.runtime.watchdog.Watchdog` still reports a stall."""
    import ray

    if not ray.is_initialized():
        log.info("Ray is not connected: not checking that %d %s fit", demand.count, demand.what)
        return
    found = autoscaler_node_types()
    if found is None:
        log.info("the cluster autoscales with node types rsclip cannot read: not checking that %d %s fit",
                 demand.count, demand.what)
        return
    types, maxima = found
    nodes = [NodeShape(dict(n["Resources"]), 1, n.get("NodeManagerAddress", "")) for n in _alive_nodes()]
    # nodes the autoscaler added also count under their type: generous, so that no job is refused wrongly
    shapes = nodes + types
    most = most_that_fit(demand, shapes)
    total = {r: demand.count * demand.bundle.get(r, 0.0) + demand.task.get(r, 0.0)
             for r in set(demand.bundle) | set(demand.task)}
    over = [f"{r} {maxima[r]:g}" for r, v in total.items() if r in maxima and v > maxima[r] + _EPS]
    if most + _EPS < demand.count or over:
        raise ClusterUnfit(_unfit(demand, most, nodes, types, over))


# ---------------------------------------------------------------- a check on every node


def _call_and_catch(check: Callable[..., None], *args: Any) -> RsclipError | None:
    """Run on a node: ``check(*args)``'s RsclipError, or None when it passed (anything else is a bug)."""
    try:
        check(*args)
    except RsclipError as exc:
        return exc
    return None


def check_nodes(check: Callable[..., None], *args: Any, hint: str = "",
                timeout: float = NODE_CHECK_TIMEOUT_S) -> None:
    """Run ``check(*args)`` once on every alive node that offers CPUs (where data tasks run).

    Re-raises the first :class:`~rsclip.errors.RsclipError` a node reports, as the same class with the node's
    address in front and ``hint`` after; raises ``RsclipError`` when a node does not answer within
    ``timeout`` seconds. ``check`` must be importable on the nodes (a module-level rsclip function).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(_call_and_catch)
    refs = {}
    for node in _alive_nodes():
        if node["Resources"].get("CPU", 0) > 0:
            where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            refs[node.get("NodeManagerAddress", node["NodeID"])] = remote.options(
                scheduling_strategy=where).remote(check, *args)
    done, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    tail = f"; {hint}" if hint else ""
    for address, ref in refs.items():
        if ref not in done:
            raise RsclipError(f"node {address} did not finish its check within {timeout:g} s{tail}")
        error = ray.get(ref)
        if error is not None:
            raise type(error)(f"node {address}: {one_line(error, 1000)}{tail}")
