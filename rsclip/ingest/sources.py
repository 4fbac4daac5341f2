"""What the embedding job reads: the listed sources, as a Ray Dataset held in the object store, and their count.

An archive is listed by Ray tasks, one per partition (:func:`rsclip.ingest.listing.partitions`: its folders,
cut by the driver a few levels down), each streaming its files page by page in blocks of at most
:data:`BLOCK_ROWS` rows. The listing is materialised in the object store before planning starts: the driver
holds block references and the count (which sizes the planning tasks), never the list, so its memory does not
grow with the archive (BENCHMARKS.md, "The listing's driver memory"). A STAC search is paged by the driver
(at most ``--limit`` items, one per uri: it keeps the uris seen) and put into the object store a block at a
time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from rsclip.geo import dates
from rsclip.table import tiles
from rsclip.ingest import listing, stac
from rsclip.ingest.batch import MESSAGE, SIZE, VERSION
from rsclip.ingest.config import EmbedConfig

# Files per block of the listing (a listing task yields one block per this many files it found).
BLOCK_ROWS = 4096
# Partitions the driver asks of an archive (it may find more: one level splits into every folder of it), and
# listing tasks at most (listing tasks then run as many at once as the read slots allow).
PARTITIONS = 256
PATH, RECURSIVE = "path", "recursive"


@dataclass
class Listed:
    """The listed sources: ``dataset`` (in the object store; columns of :func:`listed_columns`; None when
    nothing was listed) and ``files`` (its rows)."""

    dataset: object
    files: int


def listed_columns(files: Iterable[listing.ArchiveFile]) -> dict[str, np.ndarray]:
    """Listed sources as a batch (:func:`rsclip.ingest.planning.listed_sources` reads them back)."""
    files = list(files)
    text = lambda values: np.array(list(values), dtype=object)  # noqa: E731
    return {
        tiles.URI: text(f.uri for f in files),
        SIZE: np.array([f.size for f in files], dtype=np.int64),
        VERSION: text(f.version for f in files),
        MESSAGE: text(f.problem for f in files),
        tiles.ITEM_ID: text(f.item_id for f in files),
        tiles.DATETIME: np.array([dates.NULL_MICROS if f.datetime is None else f.datetime for f in files],
                                 dtype=np.int64),
        tiles.CLOUD_COVER: np.array([np.nan if f.cloud_cover is None else f.cloud_cover for f in files],
                                    dtype=np.float64),
    }


def blocks(files: Iterable[listing.ArchiveFile]) -> Iterator[list[listing.ArchiveFile]]:
    """``files`` in lists of at most :data:`BLOCK_ROWS`, as they come."""
    files = iter(files)
    while block := list(itertools.islice(files, BLOCK_ROWS)):
        yield block


def list_partitions(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage: the files of each partition of ``batch`` (columns ``path``, ``recursive``), in blocks of
    at most :data:`BLOCK_ROWS`."""
    for path, recursive in zip(batch[PATH], batch[RECURSIVE]):
        for block in blocks(listing.list_partition(listing.Partition(str(path), bool(recursive)))):
            yield listed_columns(block)


@dataclass
class Probed:
    """What the driver's probe found before any cluster work: an archive's partitions, or a STAC search's first
    :data:`BLOCK_ROWS` items and the rest of the search (paged later, into the object store)."""

    partitions: list[listing.Partition] = field(default_factory=list)
    first: list[listing.ArchiveFile] = field(default_factory=list)
    rest: Iterator[listing.ArchiveFile] = field(default_factory=lambda: iter(()))

    def __bool__(self) -> bool:
        return bool(self.partitions or self.first)


def check_archive(config: EmbedConfig) -> Probed:
    """The driver's probe of the sources (see :class:`Probed`). Raises as
    :func:`rsclip.ingest.listing.partitions` and :func:`rsclip.ingest.stac.list_items`."""
    if config.catalog.stac:
        items = stac.iter_items(config.catalog)
        return Probed(first=list(itertools.islice(items, BLOCK_ROWS)), rest=items)
    return Probed(partitions=listing.partitions(config.archive, want=PARTITIONS))


def list_sources(config: EmbedConfig, probed: Probed) -> Listed:
    """The listed sources of ``probed`` (:func:`check_archive`) in the object store, counted."""
    import ray
    from ray.data import TaskPoolStrategy

    if not probed.partitions:
        return _put_items(probed)
    parts = [{PATH: p.path, RECURSIVE: p.recursive} for p in probed.partitions]
    # at most PARTITIONS listing tasks (each costs the driver ~6 ms), a few partitions each when there are more
    ds = ray.data.from_items(parts, override_num_blocks=min(len(parts), PARTITIONS))
    ds = ds.map_batches(list_partitions, batch_size=None, batch_format="numpy", num_cpus=config.read_cpus,
                        compute=TaskPoolStrategy(size=config.read_tasks)).materialize()
    return Listed(ds, ds.count())


def _put_items(probed: Probed) -> Listed:
    """A STAC search's items into the object store a block at a time, as its pages come."""
    import ray

    refs, files = [], 0
    for block in blocks(itertools.chain(probed.first, probed.rest)):
        refs.append(ray.put(pa.table(listed_columns(block))))
        files += len(block)
    return Listed(ray.data.from_arrow_refs(refs) if refs else None, files)
