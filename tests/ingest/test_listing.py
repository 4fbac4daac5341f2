"""rsclip.ingest.listing on local folders: hidden files and folders below the archive are skipped, while the
archive itself may lie in a hidden folder (``make demo``'s ``.demo/archive``)."""

from __future__ import annotations

import shutil

from rsclip.ingest import listing


def test_hidden_entries_below_the_archive_are_skipped_but_a_hidden_parent_is_not(tmp_path, rsicd_files, monkeypatch):
    archive = tmp_path / ".demo" / "archive"
    (archive / "chips").mkdir(parents=True)
    (archive / ".cache").mkdir()
    shutil.copyfile(rsicd_files[0], archive / "chips" / "a.jpg")
    shutil.copyfile(rsicd_files[1], archive / ".cache" / "b.jpg")
    shutil.copyfile(rsicd_files[2], archive / "chips" / ".c.jpg")
    want = [str(archive / "chips" / "a.jpg")]
    assert [f.uri for f in listing.list_archive(str(archive))] == want
    monkeypatch.chdir(tmp_path)
    assert [f.uri for f in listing.list_archive(".demo/archive/")] == want
