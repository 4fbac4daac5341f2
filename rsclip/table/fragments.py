"""Distributed writes to a Lance table: workers write fragments, one process commits their metadata.

Lance's distributed write (``lance.fragment.write_fragments`` on workers, ``LanceDataset.commit`` of their
metadata in one process): a worker turns its rows into data files under ``<table>.lance/data`` and returns a
:class:`Staged` (the fragments' metadata as JSON, ~0.5 KB per fragment of thousands of rows); the committer
(:class:`Committer`, the job's driver) appends many of them in one atomic commit. Rows a worker wrote that are
never committed are in no version: no reader sees them.

Written but not committed (a driver or worker killed, a task retried) leaves data files no version names.
Each worker records the files it wrote in ``<table>.rsclip-pending/<run>/`` before returning them; the run's
driver keeps ``<run>/alive.json`` fresh (:class:`RunRecords`). The committer removes the records of what it
committed; a run that ends removes its own leftovers, and any run starting removes those of runs whose
``alive.json`` is older than :data:`DEAD_AFTER_SECONDS`, or whose owner the caller can tell is gone (a Ray
driver whose job the cluster reports dead: :mod:`rsclip.runtime.drivers`). Only files named in a
record, under the table's ``data/`` folder and in no fragment of the latest version, are ever deleted.
A worker writes its fragments under its run's folder, records their names, and only then moves them into
``data/`` (:func:`write_staged`): whenever it is killed, every file in ``data/`` that no version names is named
by a record, and what it left in its run's folder goes with the folder.

Keys: appends are never in conflict with each other, so two jobs can both append a key. The committer knows
the version its job read (the job's start) and every version it made; when another writer committed in between,
it looks up the keys of the fragments it just committed and keeps one row per key
(:func:`~rsclip.table.keyed_writes.drop_duplicate_keys`, the rule every keyed write of rsclip follows).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import pyarrow as pa

from rsclip.errors import InvalidInput
from rsclip.runtime import drivers, storage
from rsclip.table import datasets, keyed_writes

log = logging.getLogger(__name__)
PENDING_SUFFIX = ".rsclip-pending"
ALIVE = "alive.json"
HEARTBEAT_SECONDS = 60.0
DEAD_AFTER_SECONDS = 600.0
MAX_RECORD_BYTES = 1 << 20
# Lance names data files with hex/binary digits and a suffix; anything else in a record is not ours.
DATA_FILE = re.compile(r"^[0-9A-Za-z_-]{8,128}\.lance$")
RUN_NAME = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Staged:
    """What a worker wrote: fragments' metadata (JSON texts), the record naming their files, and rows."""

    fragments: list[str] = field(default_factory=list)
    record: str = ""
    rows: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Staged":
        data = json.loads(text)
        return cls([str(f) for f in data["fragments"]], str(data["record"]), int(data["rows"]))


def _options(location: str) -> dict[str, str] | None:
    return storage.lance_storage_options() if storage.is_remote(location) else None


def open_dataset(location: str):
    """The latest version of the Lance dataset at ``location``."""
    import lance

    return lance.dataset(location, storage_options=_options(location))


def pending_root(location: str) -> str:
    """Where the runs writing to the dataset at ``location`` record their uncommitted files."""
    return location.rstrip("/").removesuffix(".lance") + PENDING_SUFFIX


def write_staged(location: str, run: str, data: pa.Table, *, max_rows_per_file: int = 1 << 20) -> Staged:
    """Write ``data`` (the dataset's schema) as fragments of the dataset at ``location`` without committing
    them, record their files under run ``run`` and return them (worker side).

    The files are written under the run's folder first, recorded, and only then moved into the dataset's
    ``data/``: a worker killed at any moment leaves no file there that no record names (what it left in the
    run's folder goes with the folder)."""
    from lance import fragment

    if data.num_rows == 0:
        return Staged()
    task = uuid.uuid4().hex
    staging = f"{pending_root(location)}/{run}/{task}"
    frags = fragment.write_fragments(data, staging, schema=data.schema, storage_options=_options(location),
                                     max_rows_per_file=max_rows_per_file)
    files = [f.path for frag in frags for f in frag.files]
    record = f"{pending_root(location)}/{run}/{task}.json"
    storage.write_bytes(record, json.dumps({"files": files}))
    for name in files:
        _move(f"{staging}/data/{name}", f"{location.rstrip('/')}/data/{name}")
    _remove(staging)
    return Staged([json.dumps(frag.to_json()) for frag in frags], record, data.num_rows)


def _move(source: str, target: str) -> None:
    """Move one file within a store (a rename locally; a server-side copy and a delete on S3)."""
    fs, path = storage.filesystem(source)
    destination = storage.filesystem(target)[1]
    if not storage.is_remote(target):  # a table created empty has no data folder yet
        fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(path, destination)


def _data_files(ds) -> set[str]:
    return {f.path for frag in ds.get_fragments() for f in frag.metadata.files}


def _record_files(record: str) -> list[str]:
    """The data file names a record lists (bounded, names checked: a record is read back from the store)."""
    try:
        files = json.loads(storage.read_bytes(record, max_bytes=MAX_RECORD_BYTES))["files"]
    except Exception as exc:  # a half-written or foreign record: named, not trusted
        log.warning("ignoring the unreadable write record %s: %s", record, str(exc)[:200])
        return []
    return [f for f in files if isinstance(f, str) and DATA_FILE.match(f)] if isinstance(files, list) else []


def _listing(fs, path: str) -> list[str]:
    """The names in a folder as the store has them now (s3fs would answer from its cache of an earlier look)."""
    return fs.ls(path, detail=False, refresh=True)


def _remove(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    try:
        fs.rm(path, recursive=fs.isdir(path))
    except FileNotFoundError:
        pass


class RunRecords:
    """One run's folder of write records beside the dataset at ``location`` (see the module doc)."""

    def __init__(self, location: str, run: str | None = None, *, owner: dict | None = None,
                 owner_gone: Callable[[dict], bool] = drivers.driver_gone):
        self.location = location.rstrip("/")
        self.run = run or uuid.uuid4().hex
        # who runs this run (written in its heartbeat: by default this process's Ray driver), and how to tell
        # that another run's owner is gone
        self.owner = drivers.driver_identity() if owner is None else dict(owner)
        self.owner_gone = owner_gone
        self.folder = f"{pending_root(self.location)}/{self.run}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> "RunRecords":
        """Mark this run alive (and keep it so from a thread), then clear what dead runs left."""
        self.beat()
        self._thread = threading.Thread(target=self._beat_until_stopped, name="rsclip-run-alive", daemon=True)
        self._thread.start()
        self.clean_dead()
        return self

    def beat(self) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        storage.write_bytes(f"{self.folder}/{ALIVE}", json.dumps({**self.owner, "time": now}))

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception as exc:  # a store hiccup: the next beat retries; the run goes on
                log.warning("could not mark run %s alive: %s", self.run, str(exc)[:200])

    def _runs(self) -> list[str]:
        fs, path = storage.filesystem(pending_root(self.location))
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in _listing(fs, path)]
        except FileNotFoundError:
            return []
        return [n for n in names if RUN_NAME.match(n)]

    def _dead(self, run: str) -> bool:
        try:
            seen = json.loads(storage.read_bytes(f"{pending_root(self.location)}/{run}/{ALIVE}", max_bytes=4096))
            when = dt.datetime.fromisoformat(seen["time"])
        except Exception:  # no heartbeat (removed as it ended, or never written whole): not running
            return True
        if (dt.datetime.now(dt.timezone.utc) - when).total_seconds() > DEAD_AFTER_SECONDS:
            return True
        return bool(self.owner_gone and self.owner_gone({k: str(v) for k, v in seen.items()}))

    def clean_dead(self) -> int:
        """Remove the uncommitted files and the records of runs that are no longer alive; files removed."""
        dead = [r for r in self._runs() if r != self.run and self._dead(r)]
        return sum(self._clear(f"{pending_root(self.location)}/{r}") for r in dead)

    def _clear(self, folder: str) -> int:
        fs, path = storage.filesystem(folder)
        try:
            records = [p for p in _listing(fs, path) if p.endswith(".json") and not p.endswith(ALIVE)]
        except FileNotFoundError:
            records = []
        committed = _data_files(open_dataset(self.location)) if records else set()
        removed = 0
        for record in records:
            uri = record if not storage.is_remote(folder) else f"s3://{record}"
            for name in _record_files(uri):
                if name not in committed:
                    _remove(f"{self.location}/data/{name}")
                    removed += 1
        _remove(folder)
        if removed:
            log.info("removed %d uncommitted data files left by %s", removed, folder.rsplit("/", 1)[-1])
        return removed

    def finish(self) -> int:
        """Stop the heartbeat and remove this run's leftovers (files written by retried tasks), and again those of
        dead runs (tasks of a killed driver may finish writing after this run started)."""
        self._stop.set()
        return self._clear(self.folder) + self.clean_dead()


class Committer:
    """Commits :class:`Staged` fragments into ``table`` (a LanceDB table) in few large atomic commits.

    ``key``: the column that names a row; ``read_version``: the version the job planned against (rows of
    other writers committed after it may hold the same keys: checked after each commit, module doc). ``key``
    None: no check (a table that holds a key more than once by design checks for itself).
    """

    def __init__(self, table, key: str | None, read_version: int):
        self.table, self.key = table, key
        self.location = datasets.dataset_of(table).uri.rstrip("/")
        self.known = int(read_version)  # the newest version whose every commit is accounted for
        self.pending: list[Staged] = []
        self.commits, self.seconds = 0, 0.0

    @property
    def pending_rows(self) -> int:
        return sum(s.rows for s in self.pending)

    def add(self, staged: Staged) -> None:
        if staged.rows:
            self.pending.append(staged)

    def commit(self, delete_where: str | None = None) -> int:
        """Commit the pending fragments in one transaction, deleting the rows ``delete_where`` matches in the
        same commit; the rows committed."""
        if not self.pending and not delete_where:
            return 0
        started = time.monotonic()
        from lance.fragment import FragmentMetadata

        staged, self.pending = self.pending, []
        new = [FragmentMetadata.from_json(f) for s in staged for f in s.fragments]
        read = []
        committed = keyed_writes.retry_on_conflict(lambda: self._commit(new, delete_where, read))
        if read[-1] > self.known and self.key:  # another writer committed since the versions we know of
            self._drop_duplicates(committed, new)
        self.known = committed.version
        for s in staged:
            _remove(s.record)
        self.table.checkout_latest()
        if self.key:  # the key's index, as every keyed write gets it: look-ups of the key stay flat as it grows
            keyed_writes.ensure_key_index(self.table, self.key)
        self.commits += 1
        self.seconds += time.monotonic() - started
        return sum(s.rows for s in staged)

    def _commit(self, new: list, delete_where: str | None, read: list[int]):
        import lance

        ds = open_dataset(self.location)
        read.append(ds.version)
        if not delete_where:
            operation = lance.LanceOperation.Append(new)
        else:
            updated, removed = deletions(ds, delete_where)
            operation = lance.LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated,
                                                    new_fragments=new)
        return lance.LanceDataset.commit(self.location, operation, read_version=ds.version,
                                         storage_options=_options(self.location))

    def _drop_duplicates(self, ds, new: list) -> None:
        ours = {f.path for frag in new for f in frag.files}
        keys = []
        for frag in ds.get_fragments():
            if any(f.path in ours for f in frag.metadata.files):
                keys.extend(frag.to_table(columns=[self.key]).column(0).to_pylist())
        self.table.checkout_latest()
        if keys:
            keyed_writes.drop_duplicate_keys(self.table, self.key, pa.array(keys))


def deletions(ds, where: str) -> tuple[list, list[int]]:
    """Lance fragments with the rows ``where`` matches deleted (not committed): ``(updated, removed ids)``."""
    try:
        found = ds.to_table(columns=[], filter=where, with_row_address=True)
    except Exception as exc:
        raise InvalidInput(f"cannot select rows to replace with {where[:200]!r}: {exc}") from None
    updated, removed = [], []
    for fragment_id in sorted({int(a) >> 32 for a in found.column("_rowaddr").to_pylist()}):
        meta = ds.get_fragment(fragment_id).delete(where)
        (removed.append(fragment_id) if meta is None else updated.append(meta))
    return updated, removed
