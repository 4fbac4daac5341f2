"""infra/: the KubeRay manifests, the image they run and the local stack's command line.

The manifests are checked against the fields KubeRay (ray.io/v1) reads: a field it does not know is
silently pruned by the API server, and a rayStartParams value that is not a string is rejected, so both are
errors here. Job entrypoints are parsed by the real job scripts' own argument parsers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement

from rsclip.geo.images import decode_image
from tests.helpers import RSICD_IMAGES

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
DOCKERFILE = INFRA / "Dockerfile"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
# Where infra/Dockerfile puts the repository inside the image.
IMAGE_APP_DIR = "/app"

# Fields of the ray.io/v1 types (kuberay ray-operator/apis/ray/v1).
RAYCLUSTER_SPEC_FIELDS = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                          "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                          "gcsFaultToleranceOptions", "authOptions", "upgradeStrategy", "historyServerOptions",
                          "networkPolicy", "tlsOptions"}
AUTH_OPTIONS_FIELDS = {"mode", "secretName", "enableK8sTokenAuth"}
# The Secret every manifest takes Ray's token from (created by hand, never committed).
TOKEN_SECRET = "rsclip-ray-token"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                       "template", "scaleStrategy", "suspend", "idleTimeoutSeconds"}
AUTOSCALER_FIELDS = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
                     "securityContext", "idleTimeoutSeconds", "upscalingMode", "version"}
RAYJOB_SPEC_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
                      "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
                      "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
                      "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
                      "shutdownAfterJobFinishes", "suspend"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
GPU = "nvidia.com/gpu"


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in load_docs(p)]


def docs_of(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in all_docs() if d.get("kind") == kind]


def ray_requirement() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == "ray")


def check_quantities(resources: dict, where: str) -> None:
    for section in ("requests", "limits"):
        for name, value in (resources.get(section) or {}).items():
            assert QUANTITY.match(str(value)), f"{where}: {section}.{name}={value!r} is not a k8s quantity"


def check_pod_template(template: dict, where: str, *, ray_container: str) -> dict:
    """The Ray container of a group's pod template (checked); returns it."""
    spec = template["spec"]
    containers = spec["containers"]
    assert containers, f"{where}: no containers"
    # KubeRay runs Ray in the first container
    main = containers[0]
    assert main["name"] == ray_container, f"{where}: first container should be {ray_container}"
    assert main.get("image"), f"{where}: container without image"
    resources = main.get("resources") or {}
    assert resources.get("limits"), f"{where}: Ray sizes itself from the container limits; set them"
    check_quantities(resources, where)
    for volume_mount in main.get("volumeMounts", []):
        assert volume_mount["name"] in {v["name"] for v in spec.get("volumes", [])}, where
    return main


def check_raycluster_spec(spec: dict, where: str) -> list[dict]:
    """Check a RayClusterSpec (of a RayCluster or inside a RayJob); returns its worker groups."""
    unknown = set(spec) - RAYCLUSTER_SPEC_FIELDS
    assert not unknown, f"{where}: fields KubeRay does not know: {unknown}"
    # the image's Ray (pyproject's pin) and the Ray of the `ray` CLI that submits: one version
    assert spec["rayVersion"] == ray.__version__ and spec["rayVersion"] in ray_requirement().specifier, where
    if spec.get("autoscalerOptions"):
        assert not set(spec["autoscalerOptions"]) - AUTOSCALER_FIELDS, where
        assert spec["autoscalerOptions"].get("upscalingMode", "Default") in UPSCALING_MODES, where
    head = spec["headGroupSpec"]
    assert not set(head) - HEAD_GROUP_FIELDS, f"{where}: unknown head fields {set(head) - HEAD_GROUP_FIELDS}"
    assert not auth_problems(spec), f"{where}: {auth_problems(spec)}"
    for params in [head["rayStartParams"]]:
        assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values must be strings"
    head_container = check_pod_template(head["template"], f"{where} head", ray_container="ray-head")
    assert GPU not in (head_container["resources"].get("limits") or {}), f"{where}: the head should not hold a GPU"
    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate groupName"
    for group in groups:
        gw = f"{where} group {group['groupName']}"
        assert DNS_LABEL.match(group["groupName"]), gw
        assert not set(group) - WORKER_GROUP_FIELDS, f"{gw}: unknown fields {set(group) - WORKER_GROUP_FIELDS}"
        assert isinstance(group["rayStartParams"], dict), f"{gw}: rayStartParams is required (may be empty)"
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), gw
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], gw
        container = check_pod_template(group["template"], gw, ray_container="ray-worker")
        limits = container["resources"]["limits"]
        if GPU in limits:
            assert int(limits[GPU]) >= 1
            # extended resources: a request, when given, must equal the limit
            assert container["resources"].get("requests", {}).get(GPU, limits[GPU]) == limits[GPU], gw
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == GPU for t in tolerations), f"{gw}: GPU nodes are usually tainted"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/dev/shm" in mounts, f"{gw}: the object store needs a real /dev/shm"
    return groups


def auth_problems(spec: dict) -> list[str]:
    """What leaves a RayClusterSpec's Ray endpoints open: no token mode from the Secret, or a head service
    reachable from outside the Kubernetes cluster."""
    problems = []
    auth = spec.get("authOptions") or {}
    if set(auth) - AUTH_OPTIONS_FIELDS:
        problems.append(f"unknown authOptions fields {set(auth) - AUTH_OPTIONS_FIELDS}")
    if auth.get("mode") != "token" or auth.get("secretName") != TOKEN_SECRET:
        problems.append(f"authOptions must be mode token with secretName {TOKEN_SECRET}")
    head = spec["headGroupSpec"]
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        problems.append("the head service must stay ClusterIP, without ingress (use kubectl port-forward)")
    return problems


def gpu_groups(groups: list[dict]) -> list[dict]:
    return [g for g in groups if GPU in g["template"]["spec"]["containers"][0]["resources"]["limits"]]


def test_manifests_exist_and_parse():
    kinds = {d["kind"] for _, d in all_docs()}
    assert {"RayCluster", "RayJob", "ServiceAccount", "Namespace"} <= kinds
    for path, doc in all_docs():
        assert doc["apiVersion"] == ("v1" if doc["kind"] in {"ServiceAccount", "Namespace"} else "ray.io/v1"), path
        assert DNS_LABEL.match(doc["metadata"]["name"]), path


def test_raycluster_has_gpu_and_cpu_worker_groups():
    [(path, cluster)] = docs_of("RayCluster")
    groups = check_raycluster_spec(cluster["spec"], path.name)
    assert gpu_groups(groups), "no GPU worker group"
    assert len(groups) > len(gpu_groups(groups)), "no CPU worker group for decoding"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True


def job_script(entrypoint: str) -> tuple[Path, list[str]]:
    """The repository file and argv of a ``python /app/jobs/X.py ARGS`` entrypoint."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    assert argv[1].startswith(IMAGE_APP_DIR + "/"), f"job scripts live under {IMAGE_APP_DIR} in the image"
    script = ROOT / argv[1][len(IMAGE_APP_DIR) + 1:]
    assert script.is_file(), f"{argv[1]} is not in the repository ({script})"
    return script, argv[2:]


def parse_with_script(script: Path, argv: list[str]):
    """Parse ``argv`` with the job script's own parser (``parse_args(argv)`` or ``build_parser()``)."""
    spec = importlib.util.spec_from_file_location(f"_job_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "parse_args"):
        return module.parse_args(argv)
    return module.build_parser().parse_args(argv)


def rayjobs() -> dict[str, tuple[Path, dict]]:
    return {job_script(d["spec"]["entrypoint"])[0].stem: (p, d) for p, d in docs_of("RayJob")}


def test_rayjobs_for_both_jobs():
    assert set(rayjobs()) == {"embed_archive", "finetune"}


@pytest.mark.parametrize("job", ["embed_archive", "finetune"])
def test_rayjob_fields(job):
    path, doc = rayjobs()[job]
    spec = doc["spec"]
    assert not set(spec) - RAYJOB_SPEC_FIELDS, f"{path.name}: unknown RayJob fields {set(spec) - RAYJOB_SPEC_FIELDS}"
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec / clusterSelector"
    if "rayClusterSpec" in spec:
        groups = check_raycluster_spec(spec["rayClusterSpec"], path.name)
        assert gpu_groups(groups), f"{path.name}: the job needs GPU workers"
        assert spec["shutdownAfterJobFinishes"] is True, "a job's own cluster must not outlive it"
    else:
        [(_, cluster)] = docs_of("RayCluster")
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


@pytest.mark.parametrize("job", ["embed_archive", "finetune"])
def test_rayjob_entrypoint_parses_with_the_real_script(job):
    _, doc = rayjobs()[job]
    script, argv = job_script(doc["spec"]["entrypoint"])
    parse_with_script(script, argv)  # SystemExit on an unknown or missing option


def test_embed_rayjob_asks_one_gpu_per_actor_and_fits_its_cluster():
    _, doc = rayjobs()["embed_archive"]
    script, argv = job_script(doc["spec"]["entrypoint"])
    config, _ = parse_with_script(script, argv)
    assert config.gpus_per_actor == 1
    gpus = sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"][GPU])
               for g in gpu_groups(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]))
    assert config.num_actors <= gpus, "more embedder actors than the cluster can ever hold: the job would hang"


def test_finetune_rayjob_has_a_gpu_per_train_worker_and_resumes():
    _, doc = rayjobs()["finetune"]
    script, argv = job_script(doc["spec"]["entrypoint"])
    config, _ = parse_with_script(script, argv)
    config.validate()
    assert config.use_gpu and config.resume, "GPU workers; a retried job must continue its run"
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"][GPU])
               for g in gpu_groups(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]))
    assert config.num_workers == gpus, "one Ray Train worker per GPU of the job's cluster"
    pod_cpus = float(gpu_groups(doc["spec"]["rayClusterSpec"]["workerGroupSpecs"])[0]["template"]["spec"]
                     ["containers"][0]["resources"]["limits"]["cpu"])
    assert config.cpus_per_worker < pod_cpus, "leave CPUs on each GPU pod for the decode tasks"


def test_entrypoint_check_can_fail():
    with pytest.raises(SystemExit):
        parse_with_script(ROOT / "jobs" / "embed_archive.py", ["--archive", "s3://a/b", "--no-such-option", "1"])


def test_every_pod_runs_the_project_image_as_the_cluster_launcher_does():
    cluster_image = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]["image"]
    images = set()

    def collect(node):
        if isinstance(node, dict):
            if "image" in node and "name" in node:
                images.add(node["image"])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    for _, doc in all_docs():
        collect(doc)
    assert images == {cluster_image}


def test_auth_check_can_fail():
    [(_, cluster)] = docs_of("RayCluster")
    spec = dict(cluster["spec"])
    del spec["authOptions"]
    spec["headGroupSpec"] = {**spec["headGroupSpec"], "serviceType": "LoadBalancer"}
    assert len(auth_problems(spec)) == 2


def test_no_token_or_secret_is_committed():
    for path in [*INFRA.rglob("*.yaml"), ROOT / "cluster.yaml"]:
        for doc in load_docs(path):
            assert doc.get("kind") != "Secret", f"{path}: create Secrets by hand, never commit them"
        text = path.read_text()
        assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text, path
        assert not re.search(r"RAY_AUTH_TOKEN\s*[:=]\s*\S", text), f"{path}: a token value"


def test_head_and_workers_use_their_own_service_accounts_with_the_s3_role():
    """The head's account gets the autoscaler's Kubernetes rights (KubeRay binds them to it); the workers',
    which run whatever a job sends, gets no API token; both reach S3 through the S3-only IAM role that the
    cluster launcher's workers use (cluster.yaml)."""
    accounts = {d["metadata"]["name"]: d for _, d in docs_of("ServiceAccount")}
    assert set(accounts) == {"rsclip-head", "rsclip-worker"}
    launcher = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    worker_role = launcher["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Name"]
    for account in accounts.values():
        arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert arn == f"arn:aws:iam::123456789012:role/{worker_role}", "no pod needs more than S3"
    assert accounts["rsclip-worker"].get("automountServiceAccountToken") is False
    for path, doc in all_docs():
        if doc["kind"] in {"ServiceAccount", "Namespace"}:
            continue
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "rsclip-head", path.name
        for group in spec["workerGroupSpecs"]:
            assert group["template"]["spec"]["serviceAccountName"] == "rsclip-worker", path.name


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_builds_the_package_with_a_cuda_torch():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for op, rest in instructions if op == "ARG" and "=" in rest)
    makefile = (ROOT / "Makefile").read_text()
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)", makefile, re.M).group(1)
    assert args["TORCH_SPEC"] == torch_spec, "the image must run the torch the tests ran"
    assert re.search(r"/whl/cu\d+$", args["TORCH_INDEX"]), "torch must come from a CUDA wheel index"
    assert instructions[0][0] == "FROM" and "python:3.11" in instructions[0][1]
    assert ("WORKDIR", IMAGE_APP_DIR) in instructions
    copied = [rest.split()[0] for op, rest in instructions if op == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert "jobs/" in copied and "rsclip/" in copied
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    assert "pip install" in runs and "wget" in runs, "KubeRay's probes use wget"
    assert (INFRA / "Dockerfile.dockerignore").read_text().count(".venv")
    env = " ".join(rest for op, rest in instructions if op == "ENV")
    assert "RAY_AUTH_MODE=token" in env, "every process of the image demands and sends the cluster's token"


def test_local_stack_ray_head_command(s3):
    """``python infra/local_stack.py ray-head`` serves ``ray job submit`` with this shell's AWS variables, only
    to clients with its token (it prints their env), and stops everything it started on SIGTERM."""
    proc = subprocess.Popen([sys.executable, str(INFRA / "local_stack.py"), "ray-head", "--num-cpus", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"RAY_ADDRESS=(http://127\.0\.0\.1:\d+) RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=(\S+)",
                          line)
        assert match, line + proc.stdout.read() if proc.poll() is not None else line
        dashboard, token_file = match.groups()
        assert os.stat(token_file).st_mode & 0o077 == 0, "the token file is for this user only"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{dashboard}/api/version", timeout=5)
        submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", dashboard, "--",
                  "python", "-c", "import os; print('endpoint=' + os.environ['AWS_ENDPOINT_URL'])"]
        anonymous = subprocess.run(submit, capture_output=True, text=True, timeout=180, cwd=ROOT,
                                   env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""})
        assert anonymous.returncode != 0 and "endpoint=" not in anonymous.stdout
        client = {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_file}
        result = subprocess.run(submit, capture_output=True, text=True, timeout=180, cwd=ROOT,
                                env={**os.environ, **client})
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"endpoint={s3.endpoint}" in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{dashboard}/api/healthz", timeout=1)  # open to all: answers while up
        except OSError:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the Ray head still answers after the command stopped")


# ---------------------------------------------------------------- make demo's sample archive


@pytest.fixture
def demo_module(monkeypatch):
    """infra/demo.py with the hub pointed at a closed port on this machine: really unreachable."""
    from infra import demo
    from infra.local_stack import free_port

    monkeypatch.setattr(demo, "HUB_URL", f"http://127.0.0.1:{free_port()}")
    return demo


def test_demo_sample_uses_the_shared_data_when_the_hub_is_unreachable(demo_module, tmp_path):
    files, origin = demo_module.sample_files(12, workdir=tmp_path / "sample")
    chips = [f for f in files if f.suffix == ".jpg"]
    assert len(chips) == 12 and all(f.parent == RSICD_IMAGES for f in chips)
    assert len({f.name.split("_")[0] for f in chips}) > 6, "spread over the scene classes"
    assert "unreachable" in origin and str(demo_module.SHARED_DATA) in origin


def test_demo_sample_generates_images_only_as_a_last_resort_and_says_so(demo_module, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "SHARED_DATA", tmp_path / "no-shared-data")
    files, origin = demo_module.sample_files(5, workdir=tmp_path / "sample")
    assert origin.startswith("5 GENERATED images, not satellite imagery") and "unreachable" in origin
    assert len(files) == 5 and all(decode_image(f.read_bytes(), f.name).shape == (224, 224, 3) for f in files)


def test_demo_reads_rsicd_scenes_from_a_parquet_in_the_hub_layout(demo_module, tmp_path):
    """The hub dataset stores each scene's encoded bytes in an ``image`` struct beside ``filename``; built here
    from real scenes because the hub cannot be reached from the test machine."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    real = sorted(RSICD_IMAGES.glob("*.jpg"))[:40]
    table = pa.table({
        "filename": [f.name for f in real],
        "captions": [["a caption"]] * len(real),
        "image": [{"bytes": f.read_bytes(), "path": None} for f in real],
    })
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    out = demo_module.rsicd_from_parquet(tmp_path / "test-00000-of-00001.parquet", 10, tmp_path / "out")
    assert len(out) == 10 and [p.name for p in out] == [f.name for f in real[::4]]
    assert all(p.read_bytes() == (RSICD_IMAGES / p.name).read_bytes() for p in out)
