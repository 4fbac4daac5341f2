"""The watchdog's diagnosis of a stalled run: what it says is pending is what Ray's state API holds.

A real private Ray instance (started as the jobs start theirs) with an actor whose constructor blocks until a
file appears, beside an actor that cannot be placed; and the message functions fed the state API's own records.
"""

from __future__ import annotations

import os
import time

import pytest
from ray.util.state.common import ActorState, TaskState

from rsclip.runtime import cluster
from rsclip.runtime.watchdog import constructors_running, diagnose, pending_actors

STATE_WAIT_S = 120


class BlockedConstructor:
    """An actor whose ``__init__`` waits for ``path`` to exist (a model that never finishes loading)."""

    def __init__(self, path: str):
        while not os.path.exists(path):
            time.sleep(0.05)

    def ping(self) -> int:
        return 1


class TooBig:
    def ping(self) -> int:
        return 1


def _task(actor_id: str, state: str, started_s_ago: float | None) -> TaskState:
    start = None if started_s_ago is None else int(time.time() * 1000 - started_s_ago * 1000)
    return TaskState(task_id="t" + actor_id, attempt_number=0, name="BlockedConstructor.__init__", state=state,
                     job_id="01000000", actor_id=actor_id, type="ACTOR_CREATION_TASK",
                     func_or_class_name="BlockedConstructor.__init__", parent_task_id="", node_id=None,
                     worker_id=None, worker_pid=None, error_type=None, start_time_ms=start)


def _actor(actor_id: str, name: str, need: dict) -> ActorState:
    return ActorState(actor_id=actor_id, class_name=name, state="PENDING_CREATION", job_id="01000000", name="",
                      node_id=None, pid=None, ray_namespace="ns", required_resources=need)


def test_a_running_constructor_is_starting_and_an_unplaced_actor_waits_for_resources():
    tasks = [_task("a1", "RUNNING", 42.0), _task("b1", "PENDING_NODE_ASSIGNMENT", None)]
    running = constructors_running(tasks)
    assert set(running) == {"a1"} and 41 <= running["a1"] <= 60
    lines = pending_actors([_actor("a1", "BlockedConstructor", {"CPU": 1.0}), _actor("b1", "TooBig", {"CPU": 2.0}),
                            _actor("c1", "_StatsActor", {"CPU": 0.0})], running)
    assert lines[0].startswith("actor BlockedConstructor still starting (constructor running for 4")
    assert lines[1:] == ["1 TooBig actor wait for resources (CPU 2)"]


@pytest.fixture
def local_ray():
    """A private 2-CPU Ray with its dashboard (the state API), started as the jobs start theirs."""
    import ray

    cluster.start_ray(cluster.LOCAL, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, log_to_driver=False,
                      quiet=True)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow  # a Ray instance
def test_a_hung_actor_constructor_is_reported_as_starting_not_as_waiting_for_a_cpu(local_ray, tmp_path):
    release = tmp_path / "release"
    blocked = local_ray.remote(num_cpus=1)(BlockedConstructor).remote(str(release))
    too_big = local_ray.remote(num_cpus=2)(TooBig).remote()  # never placed while the other holds a CPU
    deadline = time.monotonic() + STATE_WAIT_S
    text = ""
    while "still starting" not in text or "TooBig" not in text:  # until the state API shows both
        assert time.monotonic() < deadline, text
        text = diagnose("waiting for the pipeline's first batch")
    assert "actor BlockedConstructor still starting (constructor running for " in text, text
    assert "1 TooBig actor wait for resources (CPU 2)" in text, text
    assert "BlockedConstructor actor wait" not in text and "cluster free: CPU 1 of 2" in text, text
    release.touch()
    assert local_ray.get([blocked.ping.remote()], timeout=STATE_WAIT_S) == [1]
    del too_big
