"""rsclip.ingest.writer on real local LanceDB tables, without Ray: --max-failed-batches counts the embedder's
batches (not the writer's commits), a run whose every tile failed says so with its kinds of failure, and error
rows of files gone from the archive are deleted."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from rsclip.ingest import batch as B, listing, writer
from rsclip.table import tiles

DIM = 8


def failed_rows(uris: list[str], stage: str, message: str) -> list[dict]:
    return [B.error_row(u, stage, f"{u}: {message}", window=(0, 0, 10, 10)) for u in uris]


def as_batch(rows: list[dict], marks: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """A pipeline batch of ``rows``; ``marks``: row -> the embedder's batch outcome on it."""
    data = B.rows_to_batch(rows, B.PLAN_COLUMNS)
    data[B.EMBED_BATCH] = np.zeros(len(rows), np.int8)
    for row, mark in (marks or {}).items():
        data[B.EMBED_BATCH][row] = mark
    return data


@pytest.fixture
def tables(tmp_path):
    db = tmp_path / "db"
    table = tiles.create_table(db, model="tiny", dim=DIM)
    return table, writer.open_errors_table(db, tiles.DEFAULT_TABLE)


def test_failed_embedding_batches_are_counted_as_the_embedder_ran_them_within_one_commit(tables):
    """Two embedder batches of 2 tiles whose every tile failed, in one writer batch far below --commit-rows:
    the job stops after 2 (the old count, one per 512-row commit, never stopped a small archive)."""
    table, errors = tables
    rows = failed_rows([f"/a/{i}.jpg" for i in range(4)], B.STAGE_EMBED, "the model gave a non-finite embedding")
    w = writer.TileWriter(table, errors, commit_rows=512, max_failed_batches=2)
    with pytest.raises(writer.EmbeddingBroken, match=r"every tile of 2 consecutive batches.*/a/2\.jpg: the model"):
        w.write(as_batch(rows, {0: B.EMBED_BATCH_FAILED, 2: B.EMBED_BATCH_FAILED}))
    assert errors.count_rows() == 4  # what failed is recorded before the job stops


def test_a_batch_that_embedded_something_starts_the_count_over_and_bad_files_never_count(tables):
    table, errors = tables
    w = writer.TileWriter(table, errors, commit_rows=512, max_failed_batches=2)
    embed = failed_rows([f"/a/{i}.jpg" for i in range(3)], B.STAGE_EMBED, "RuntimeError: CUDA error")
    w.write(as_batch(embed, {0: B.EMBED_BATCH_FAILED, 1: B.EMBED_BATCH_OK, 2: B.EMBED_BATCH_FAILED}))
    unreadable = failed_rows([f"/a/bad{i}.jpg" for i in range(40)], B.STAGE_PLAN, "not a readable image")
    w.write(as_batch(unreadable))  # files that fail before the model: no embedding batch at all
    counts = w.close()
    assert counts.failed == 43 and counts.failed_files == 40 and counts.nothing_embedded()
    assert counts.failures().startswith("43 tiles failed (plan: not a readable image x40, embed: RuntimeError x3); "
                                        "first: /a/0.jpg: RuntimeError: CUDA error")


def test_failure_kinds_are_the_message_up_to_its_first_colon_without_the_uri():
    assert writer.failure_kind("s3://b/x.jpg: UnidentifiedImageError: cannot identify", "s3://b/x.jpg") == \
        "UnidentifiedImageError"
    assert writer.failure_kind("s3://b/x.jpg: access denied: AccessDenied", "s3://b/x.jpg") == "access denied"
    assert writer.failure_kind("", "s3://b/x.jpg") == "unknown"


def test_a_run_with_some_tiles_embedded_or_present_is_not_a_run_that_embedded_nothing():
    assert not writer.WriteCounts(embedded=1, failed=5).nothing_embedded()
    assert not writer.WriteCounts(present=3, failed=5).nothing_embedded()  # a rerun over a few bad files
    assert not writer.WriteCounts().nothing_embedded()  # nothing to do is not a failure
    assert writer.WriteCounts(failed=1).nothing_embedded()


def test_error_rows_of_files_gone_from_the_archive_are_deleted_and_no_others(tables, tmp_path):
    _, errors = tables
    archive = tmp_path / "arch"
    archive.mkdir()
    (archive / "kept.jpg").write_bytes(b"still not an image")
    kept, gone, beside = str(archive / "kept.jpg"), str(archive / "gone.jpg"), f"{archive}-2/x.jpg"
    writer.record_errors(errors, failed_rows([kept, gone, beside, "s3://b/arch/y.jpg"], B.STAGE_PLAN, "bad"))
    root = listing.archive_root(str(archive))
    listed = [f.uri for f in listing.list_archive(str(archive))]
    assert listed == [kept]
    removed = writer.clear_unlisted_errors(errors, root, listed, dt.datetime.now(dt.timezone.utc))
    left = sorted(r[tiles.URI] for r in errors.to_arrow().to_pylist())
    assert removed == 1 and left == sorted([kept, beside, "s3://b/arch/y.jpg"])
    assert listing.archive_root("s3://b/arch/") == "s3://b/arch"
