"""Secrets stay where they are: jobs run with credentials set leave the secret key in no record Ray exposes
(jobs with their runtime envs and entrypoints, actors, tasks, workers, placement groups, runtime envs,
nodes: what the dashboard and ``ray list --detail`` show to anyone who reaches the cluster), in no log of
the Ray session, and in nothing the jobs write (the tile table's files, checkpoints, metrics, summary.json).

A private SeaweedFS whose secret key is random for this run, so that a hit can only be a leak; a private
Ray head whose processes have the credentials (as a node has its own environment); the real job scripts
through ``ray job submit``. A control run passes a canary through a runtime_env to show that the scan
finds what Ray records.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from infra.local_stack import RayHead, SeaweedFS
from rsclip.train.data import read_samples
from tests.helpers import BUCKET, ROOT, RSICD_DIR

SECRET = "leak-check-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A SeaweedFS with a random secret key, and a Ray head whose processes carry its credentials."""
    with SeaweedFS(tmp_path_factory.mktemp("secret-s3"), buckets=(BUCKET,), secret_key=SECRET) as s3:
        with RayHead(num_cpus=2, env=s3.env, inherit_aws=False) as head:
            yield s3, head


def ray_records(head: RayHead) -> str:
    """Every record Ray serves about the cluster's work, with detail, and every job's logs, as one text."""
    from ray.job_submission import JobSubmissionClient
    from ray.util import state

    texts = []
    for lister in (state.list_jobs, state.list_actors, state.list_tasks, state.list_workers, state.list_nodes,
                   state.list_placement_groups, state.list_runtime_envs):
        rows = lister(address=head.dashboard_url, detail=True, limit=10_000, raise_on_missing_output=False)
        texts += [repr(row) for row in rows]  # every field, nested runtime envs included
    client = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers)
    for job in client.list_jobs():
        texts.append(repr(job))  # entrypoint, runtime_env, metadata
        if job.submission_id:
            texts.append(client.get_job_logs(job.submission_id))
    return "\n".join(texts)


def session_logs_with(head: RayHead, needle: str) -> list[str]:
    """The files of the Ray session's log folder that contain ``needle``."""
    logs = head.temp_dir / "session_latest" / "logs"
    assert logs.is_dir() and any(logs.rglob("*")), logs
    return [str(p) for p in logs.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def objects_with(s3, prefix: str, needle: str) -> tuple[int, list[str]]:
    """How many objects lie under ``s3://BUCKET/prefix``, and the keys of those that contain ``needle``."""
    client = s3.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    found = [k for k in keys if needle.encode() in client.get_object(Bucket=BUCKET, Key=k)["Body"].read()]
    return len(keys), found


def test_a_runtime_env_canary_is_found_by_the_scan(stack):
    """The control: what passes through a runtime_env is in Ray's records for anyone to read."""
    _, head = stack
    canary = "canary-" + secrets.token_hex(8)
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.dashboard_url,
           "--runtime-env-json", json.dumps({"env_vars": {"RSCLIP_CANARY": canary}}), "--", "python", "-c", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=head.process_env())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert canary in ray_records(head)


def test_jobs_with_credentials_leave_the_secret_nowhere(stack, tiny_model, rsicd_files, tmp_path):
    s3, head = stack
    prefix = uuid.uuid4().hex[:12]
    client = s3.client()
    for f in rsicd_files[:6]:
        client.upload_file(str(f), BUCKET, f"{prefix}/chips/{f.name}")
    base = f"s3://{BUCKET}/{prefix}"
    embed = head.submit(["python", "jobs/embed_archive.py", "--archive", f"{base}/chips", "--db", f"{base}/db",
                         "--model", str(tiny_model), "--batch-size", "4", "--commit-rows", "4", "--index", "never"],
                        working_dir=ROOT, timeout=600)
    assert embed.returncode == 0, embed.stdout[-3000:] + embed.stderr[-3000:]

    samples = read_samples([str(RSICD_DIR)])
    pick = [s for s in samples if s["split"] == "train"][:24] + [s for s in samples if s["split"] == "val"][:8]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({k: s[k] for k in ("image", "captions", "label", "split")}) + "\n"
                                for s in pick))
    train = head.submit(["python", "jobs/finetune.py", "--data", str(manifest), "--output", f"{base}/run",
                         "--model", str(tiny_model), "--epochs", "1", "--batch-size", "8", "--num-workers", "1"],
                        working_dir=ROOT, timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]

    assert SECRET not in embed.stdout + embed.stderr + train.stdout + train.stderr
    assert SECRET not in ray_records(head)
    assert session_logs_with(head, SECRET) == []
    written, leaked = objects_with(s3, f"{prefix}/db/", SECRET)
    assert written and leaked == [], "the tile table's files"
    written, leaked = objects_with(s3, f"{prefix}/run/", SECRET)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/run/")["Contents"]]
    assert any(k.endswith("/summary.json") for k in keys) and any("/ray/" in k for k in keys), keys
    assert leaked == [], "checkpoints, metrics and summary.json"
