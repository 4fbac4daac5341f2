"""Hugging Face hub models as local folders: the cache first, then one short look-up, one line when offline.

:func:`snapshot` is the one way rsclip reaches the hub. A model the local cache holds completely is read from
it with no network at all. Otherwise one request (``model_info``, timed out after ``HF_HUB_ETAG_TIMEOUT``
seconds, never retried) asks the hub for the current revision, which is then downloaded. Asked through
transformers, an unreachable hub is retried with back-off for about 30 s, a log line each time, before one
error; here it is one :class:`~rsclip.errors.NotFound` line naming ``--model`` and ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator, Sequence

from rsclip.errors import NotFound
from rsclip.runtime.reporting import one_line

_HUB_LOGGERS = ("huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2")
_ADVICE = "give --model a local folder or s3:// prefix"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The hub's and its HTTP client's loggers silenced: a failed look-up is reported once, by the caller."""
    loggers = [logging.getLogger(name) for name in _HUB_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _cached(repo_id: str, patterns: Sequence[str], required: Sequence[str]) -> Path | None:
    """The cached snapshot of ``repo_id`` when it holds a file for each glob of ``required``; else None."""
    from huggingface_hub import snapshot_download

    try:
        with _quiet():
            folder = Path(snapshot_download(repo_id, allow_patterns=list(patterns), local_files_only=True))
    except Exception:  # not cached, or cached in part: the hub is asked
        return None
    return folder if all(any(folder.glob(glob)) for glob in required) else None


def _current_revision(repo_id: str) -> str:
    """The commit the hub serves for ``repo_id``: one request, a short timeout, no retries."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise NotFound(f"hub model {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                       f"{_ADVICE}, or unset HF_HUB_OFFLINE to download it")
    try:
        with _quiet():
            info = HfApi().model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except (RepositoryNotFoundError, HFValidationError):  # gated ones too: the hub tells no more without a token
        raise NotFound(f"no hub model {repo_id} (or it needs a token): {_ADVICE}") from None
    except Exception as exc:  # unreachable, timed out, refused: the network's own words, on one line
        raise NotFound(f"hub model {repo_id} is not in the local Hugging Face cache and the hub cannot be reached "
                       f"({type(exc).__name__}: {one_line(exc)}): {_ADVICE}, or download it once online "
                       "(HF_HUB_OFFLINE=1 reads the cache only)") from None
    if not info.sha:
        raise NotFound(f"the hub named no revision of {repo_id}: {_ADVICE}")
    return info.sha


def snapshot(repo_id: str, patterns: Sequence[str], required: Sequence[str] = ("config.json",)) -> Path:
    """The local folder of the files of hub model ``repo_id`` matching the globs ``patterns``.

    The cache's snapshot when it holds a file for each glob of ``required`` (no network); else the hub's
    current revision, downloaded into the cache. Raises :class:`~rsclip.errors.NotFound` in one line for an
    unknown repository, an unreachable hub or ``HF_HUB_OFFLINE`` with the model not cached.
    """
    cached = _cached(repo_id, patterns, required)
    if cached is not None:
        return cached
    revision = _current_revision(repo_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns)))
    except Exception as exc:  # the hub went away mid-download, a disk fault: the hub says which
        raise NotFound(f"cannot download hub model {repo_id}: {type(exc).__name__}: {one_line(exc)}") from None
