"""infra/local_stack.RayHead.submit: a job that ran and failed is never submitted again (only a submission the
job API dropped before creating the job is retried; that Ray flake cannot be produced on demand)."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # the session's Ray head


def test_a_failed_job_is_submitted_once_and_its_failure_kept(ray_head, tmp_path):
    marks = tmp_path / "runs.txt"
    script = f"open({str(marks)!r}, 'a').write('ran\\n'); raise SystemExit(3)"
    res = ray_head.submit(["python", "-c", script], working_dir=ROOT, timeout=300)
    assert res.returncode != 0
    assert marks.read_text() == "ran\n"  # one submission, one run
