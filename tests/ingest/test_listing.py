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


# ---------------------------------------------------------------- partitions for listing tasks

IMAGES = ["top.jpg", "a/1.jpg", "a/2.png", "a/deep/3.tif", "a/deep/deeper/4.jpg", "b/5.jpg", "c/8.jpeg",
          "e/f/g/h/9.jpg"]
OTHERS = ["b/.hidden/6.jpg", ".cache/7.jpg", "c/notes.txt", "a/.x.jpg"]
FLAT = 1001  # files of one folder: more than one page of a listing


def _listed(parts) -> list[str]:
    return [f.uri for p in parts for f in listing.list_partition(p)]


def _check_cuts(root: str, want: list[str]) -> None:
    """Whatever the number of partitions asked, their listings hold every image once and nothing else."""
    assert sorted(listing.list_archive(root), key=lambda f: f.uri) == listing.list_archive(root)
    assert [f.uri for f in listing.list_archive(root)] == want
    for asked in (1, 2, 5, 1000):
        parts = listing.partitions(root, want=asked)
        got = _listed(parts)
        assert sorted(got) == want and len(got) == len(set(got)), (asked, parts)
    assert len(listing.partitions(root, want=1000)) >= 5  # split into its folders, three levels down


def test_an_archive_cut_into_partitions_lists_every_image_once(tmp_path, monkeypatch):
    for name in IMAGES + OTHERS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(FLAT):
        (flat / f"{i:05d}.jpg").write_bytes(b"")
    want = sorted([str(tmp_path / n) for n in IMAGES] + [str(flat / f"{i:05d}.jpg") for i in range(FLAT)])
    _check_cuts(str(tmp_path), want)
    monkeypatch.setattr(listing, "MAX_SPLIT_ENTRIES", 3)  # a folder with more entries is listed whole
    assert listing.partitions(str(tmp_path), want=100) == [listing.Partition(str(tmp_path), True)]
    assert sorted(_listed(listing.partitions(str(tmp_path), want=100))) == want
    one = listing.partitions(str(tmp_path / "top.jpg"), want=100)
    assert _listed(one) == [str(tmp_path / "top.jpg")]


def test_an_s3_archive_cut_into_partitions_lists_every_image_once(s3, s3_prefix):
    from concurrent.futures import ThreadPoolExecutor

    client = s3.client()
    bucket, prefix = s3_prefix[len("s3://"):].split("/", 1)
    keys = IMAGES + OTHERS + [f"flat/{i:05d}.jpg" for i in range(FLAT)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=f"{prefix}/{k}", Body=b"x"), keys))
    client.put_object(Bucket=bucket, Key=f"{prefix}/a/", Body=b"")  # a folder marker, as some tools write
    client.put_object(Bucket=bucket, Key=f"{prefix}-sibling/top.jpg", Body=b"x")  # shares the prefix's text
    want = sorted(f"{s3_prefix}/{k}" for k in IMAGES + keys[len(IMAGES) + len(OTHERS):])
    _check_cuts(s3_prefix, want)
    assert {f.version for f in listing.list_archive(s3_prefix)} == {"9dd4e461268c8034f5c8564e155c67a6"}  # ETag


def test_listing_tasks_put_the_listing_in_the_object_store_and_count_it(ray_driver, tmp_path, monkeypatch):
    from rsclip.ingest import sources
    from rsclip.ingest.config import EmbedConfig

    for name in IMAGES + OTHERS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(sources, "BLOCK_ROWS", 3)
    config = EmbedConfig(db=str(tmp_path / "db"), archive=str(tmp_path), read_cpus=0.5)
    probed = sources.check_archive(config)
    assert probed and len(probed.partitions) >= 5 and not probed.first
    listed = sources.list_sources(config, probed)
    rows = listed.dataset.take_all()
    assert listed.files == len(rows) == len(IMAGES)
    assert sorted(r["uri"] for r in rows) == [f.uri for f in listing.list_archive(str(tmp_path))]
    assert {r["version"] for r in rows} == {f.version for f in listing.list_archive(str(tmp_path))}

    # a STAC search is paged by the driver into blocks of the object store as its pages come
    items = [listing.ArchiveFile(f"s3://b/{i}.tif", -1, "", 1_600_000_000_000_000 + i, f"item-{i}", 0.5 * i)
             for i in range(7)]
    served = iter(items[3:])
    paged = sources.list_sources(config, sources.Probed(first=items[:3], rest=served))
    assert paged.files == 7 and next(served, None) is None
    got = sorted(paged.dataset.take_all(), key=lambda r: r["uri"])
    assert [(r["uri"], r["item_id"], r["cloud_cover"]) for r in got] == [(f.uri, f.item_id, f.cloud_cover)
                                                                        for f in sorted(items)]
    empty = sources.list_sources(config, sources.Probed())
    assert empty.files == 0 and empty.dataset is None and not sources.Probed()
