"""The embedding job's model reference (issue 25, item 7): a local model folder is absolute before the job records
it or sends it to the embedder actors, which run in another working directory (``models/tiny`` would be a hub
id there: every tile failed, and the table recorded a path no later query from another folder could open)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rsclip
from rsclip.ingest.config import EmbedConfig
from rsclip.model.sources import DEFAULT_MODEL
from rsclip.table import tiles
from rsclip.testing import build_tiny_clip
from tests.helpers import ROOT, spread_files


def test_a_local_model_folder_is_made_absolute_and_other_sources_are_kept(tmp_path, monkeypatch):
    build_tiny_clip(tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    absolute = os.path.join(os.getcwd(), "models", "tiny")
    for spelling in ("models/tiny", "./models/tiny/", "models/../models/tiny", absolute):
        config = EmbedConfig(db="db", archive="images", model=spelling)
        assert config.model == absolute, spelling
        assert EmbedConfig.from_dict(config.to_dict()).model == absolute  # as a worker rebuilds it
    assert EmbedConfig(db="db", archive="images").model == DEFAULT_MODEL  # hub ids as written
    assert EmbedConfig(db="db", archive="images", model="s3://bucket/models/tiny").model == "s3://bucket/models/tiny"
    assert EmbedConfig(db="db", archive="images", model="models/none").model == "models/none"  # loading says why


@pytest.mark.slow  # a private local Ray
def test_the_job_run_with_a_relative_model_folder_embeds_and_records_it_absolute(tmp_path, rsicd_files):
    work = tmp_path / "work"
    build_tiny_clip(work / "models" / "tiny")
    (work / "images").mkdir()
    files = spread_files(rsicd_files, 4)
    for f in files:
        (work / "images" / f.name).write_bytes(f.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = ["--archive", str(work / "images"), "--db", str(tmp_path / "db"), "--model", "models/tiny",
            "--batch-size", "4"]
    res = subprocess.run([sys.executable, str(ROOT / "jobs" / "embed_archive.py"), *args],
                         cwd=work, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = tiles.open_table(tmp_path / "db")
    assert tiles.table_model(table) == (str((work / "models" / "tiny").resolve()), 32)
    assert table.count_rows() == len(files)
    assert len(rsclip.query(tmp_path / "db", "a beach", k=2)) == 2  # from another folder: the model is found


def test_read_tasks_take_many_files_but_a_small_archive_still_fills_every_read_slot(tmp_path):
    from rsclip.ingest.config import MAX_READ_TASKS, TASKS_PER_READ_SLOT
    from rsclip.ingest.pipeline import files_per_task

    config = EmbedConfig(db=str(tmp_path), archive=str(tmp_path), read_tasks=3)
    assert files_per_task(config, 256 * MAX_READ_TASKS) == config.files_per_task == 256
    assert files_per_task(config, 30) == 3  # 10 tasks: more than the 3 slots hold at once
    assert -(-30 // files_per_task(config, 30)) >= TASKS_PER_READ_SLOT * 3 - 2
    assert files_per_task(config, 1) == 1
    few = EmbedConfig(db=str(tmp_path), archive=str(tmp_path), read_tasks=1, files_per_task=8)
    assert files_per_task(few, 8 * MAX_READ_TASKS) == 8


def test_a_large_archive_makes_larger_read_tasks_not_more_of_them_unless_the_read_slots_need_more(tmp_path):
    from rsclip.ingest.config import MAX_READ_TASKS, TASKS_PER_READ_SLOT
    from rsclip.ingest.pipeline import files_per_task

    config = EmbedConfig(db=str(tmp_path), archive=str(tmp_path), read_tasks=3)
    for files in (1_000_000, 10_000_000, 10_000_001):  # the driver holds every waiting task's block
        per_task = files_per_task(config, files)
        assert per_task > config.files_per_task and -(-files // per_task) == MAX_READ_TASKS
    wide = EmbedConfig(db=str(tmp_path), archive=str(tmp_path), read_tasks=1000)  # a cluster of 1,000 read slots
    assert -(-10_000_000 // files_per_task(wide, 10_000_000)) == TASKS_PER_READ_SLOT * 1000
    assert files_per_task(wide, 100_000) == 25  # its small archive: four tasks a slot still
