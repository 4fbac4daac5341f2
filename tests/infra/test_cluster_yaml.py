"""cluster.yaml: valid for Ray's own cluster launcher, sized sensibly, keyless, and every key explained."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# vCPUs and GPUs of the EC2 types the file may use: a node type must not advertise more than it has.
INSTANCE_SHAPES = {
    "m6i.xlarge": (4, 0), "m6i.2xlarge": (8, 0), "m6i.4xlarge": (16, 0),
    "c6i.4xlarge": (16, 0), "c6i.8xlarge": (32, 0),
    "g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.4xlarge": (16, 1), "g5.12xlarge": (48, 4),
    "g6.2xlarge": (8, 1), "g6e.2xlarge": (8, 1), "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_matches_rays_cluster_schema(config):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(config, schema)


def test_passes_the_checks_ray_up_runs(config):
    """``ray up`` fills in the provider's defaults, then validates; the same two calls here."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert prepared["provider"]["type"] == "aws"


def test_schema_check_can_fail(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def node_types_by_role(config) -> dict[str, dict]:
    types = config["available_node_types"]
    gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    cpu = [n for n, t in types.items() if n != config["head_node_type"] and not t["resources"].get("GPU")]
    assert len(gpu) == 1 and len(cpu) == 1, (gpu, cpu)
    return {"head": types[config["head_node_type"]], "gpu": types[gpu[0]], "cpu": types[cpu[0]]}


def test_node_types_head_gpu_and_cpu_workers(config):
    roles = node_types_by_role(config)
    head, gpu, cpu = roles["head"], roles["gpu"], roles["cpu"]
    assert head["resources"].get("GPU", 0) == 0
    # losing the head loses the cluster: never spot
    assert "InstanceMarketOptions" not in head["node_config"]
    for worker in (gpu, cpu):
        assert worker["min_workers"] == 0, "idle clusters should cost only the head"
        assert worker["max_workers"] >= 2, "multi-node embedding and DDP need at least two"
        assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert gpu["max_workers"] + cpu["max_workers"] <= config["max_workers"]
    for node_type in (head, gpu, cpu):
        shape = INSTANCE_SHAPES[node_type["node_config"]["InstanceType"]]
        assert node_type["resources"].get("CPU", 0) <= shape[0]
        assert node_type["resources"].get("GPU", 0) == shape[1], "advertise exactly the GPUs the instance has"


def test_s3_through_instance_profile_not_keys(config):
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "aws_access_key_id"):
        assert word not in text
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), f"{name} has no instance profile"


def test_every_node_runs_the_project_image(config):
    assert config["docker"]["image"].rsplit(":", 1)[0].endswith("/rsclip")
    # the image carries the code: nothing to pip install at boot
    assert config["setup_commands"] == []
    starts = " ".join(config["head_start_ray_commands"])
    assert "--head" in starts and "--autoscaling-config" in starts


def uncommented_keys(text: str) -> list[str]:
    """Keys of block mappings with neither a comment on their line nor a comment line right above."""
    lines = text.splitlines()
    missing = []

    def commented(line_no: int) -> bool:
        if "#" in lines[line_no]:
            return True
        above = line_no - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        return above >= 0 and lines[above].lstrip().startswith("#")

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                # a flow mapping ({"CPU": 4}) is one value, explained by its parent key's comment
                if not node.flow_style and not commented(key.start_mark.line):
                    missing.append(f"{path}{key.value} (line {key.start_mark.line + 1})")
                walk(value, f"{path}{key.value}.")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}{i}.")

    walk(yaml.compose(text), "")
    return missing


def test_every_key_is_commented():
    assert uncommented_keys(CLUSTER_YAML.read_text()) == []


def test_comment_check_can_fail():
    assert uncommented_keys("# the name\nname: x\nplain: 1\nnested:  # a map\n  inner: 2\n") == [
        "plain (line 3)", "nested.inner (line 5)"]


# ---------------------------------------------------------------- security: token auth, IMDSv2, two roles

AWS_POLICIES = ROOT / "infra" / "aws"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
TOKEN_MODE = "RAY_AUTH_MODE=token"
# Ray's default token file, relative to the home of the user Ray runs as.
RAY_TOKEN_FILE = ".ray/auth_token"
LAUNCH_ACTIONS = {"ec2:runinstances", "ec2:terminateinstances", "iam:passrole"}


def image_home() -> str:
    """The HOME the image's processes run with (infra/Dockerfile's ENV)."""
    match = re.search(r"^ENV HOME=(\S+)", DOCKERFILE.read_text(), re.M)
    assert match, "infra/Dockerfile sets HOME"
    return match.group(1)


def auth_problems(config: dict) -> list[str]:
    """What keeps the cluster's Ray endpoints from demanding the token (empty when nothing does)."""
    problems = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        if not starts or not all(TOKEN_MODE in c.split("ray start")[0] for c in starts):
            problems.append(f"{key}: ray start without {TOKEN_MODE}")
    mounts = config.get("file_mounts") or {}
    if mounts.get(f"{image_home()}/{RAY_TOKEN_FILE}") != f"~/{RAY_TOKEN_FILE}":
        problems.append(f"file_mounts: no ~/{RAY_TOKEN_FILE} at Ray's default path in the image")
    return problems


def imds_problems(config: dict) -> list[str]:
    """Node types whose instances would answer IMDSv1 (or pass the token beyond the instance)."""
    problems = []
    for name, node_type in config["available_node_types"].items():
        options = node_type["node_config"].get("MetadataOptions") or {}
        if options.get("HttpTokens") != "required" or options.get("HttpPutResponseHopLimit") != 1:
            problems.append(name)
    return problems


def policy_actions(name: str) -> list[tuple[str, object, dict]]:
    """(action, resource, condition) of every Allow statement of infra/aws/NAME."""
    doc = json.loads((AWS_POLICIES / name).read_text())
    rows = []
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow", "no Deny trickery: the roles are allow-lists"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        rows += [(a.lower(), statement["Resource"], statement.get("Condition") or {}) for a in actions]
    return rows


def test_every_ray_endpoint_demands_the_token(config):
    assert auth_problems(config) == []
    # the image is token-mode by default too: a node without the token does not start an open cluster
    assert re.search(rf"^\s*{TOKEN_MODE}\b", DOCKERFILE.read_text(), re.M)


def test_token_check_can_fail(config):
    broken = copy.deepcopy(config)
    broken["worker_start_ray_commands"] = [c.replace("export RAY_AUTH_MODE=token; ", "")
                                           for c in broken["worker_start_ray_commands"]]
    broken["file_mounts"] = {}
    assert len(auth_problems(broken)) == 2


def test_every_instance_requires_imdsv2(config):
    assert imds_problems(config) == []
    broken = copy.deepcopy(config)
    del broken["available_node_types"]["gpu_worker"]["node_config"]["MetadataOptions"]
    assert imds_problems(broken) == ["gpu_worker"]


def test_workers_get_an_s3_role_and_only_the_head_may_launch(config):
    roles = node_types_by_role(config)
    head = roles["head"]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {roles[r]["node_config"]["IamInstanceProfile"]["Name"] for r in ("gpu", "cpu")}
    assert len(workers) == 1 and head not in workers, "the workers share one role, not the head's"
    [worker] = workers
    node = policy_actions("rsclip-node-policy.json")
    assert {a.split(":")[0] for a, _, _ in node} == {"s3", "ecr"}, "every node: S3 and the image pull only"
    assert not any("*" in a for a, _, _ in node) and not LAUNCH_ACTIONS & {a for a, _, _ in node}
    assert all(r != "*" for a, r, _ in node if a.startswith("s3:")), "S3 on named buckets only"
    launcher = policy_actions("rsclip-launcher-policy.json")
    assert {"ec2:runinstances", "ec2:terminateinstances"} <= {a for a, _, _ in launcher}
    passes = [(r, c) for a, r, c in launcher if a == "iam:passrole"]
    assert passes == [(f"arn:aws:iam::123456789012:role/{worker}",
                       {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})], \
        "the head passes the worker role, to EC2, and nothing else"
