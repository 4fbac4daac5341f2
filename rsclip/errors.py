"""The errors rsclip raises on purpose: types only.

::

    RsclipError                      anything rsclip reports as one line (CLI and jobs: exit status 2)
    ├── InvalidInput (ValueError)    bad arguments, malformed or unreadable input
    │   ├── NotFound                 a table, tile, model, object or folder that is not there
    │   ├── ModelMismatch            vectors or weights of another model than the table's
    │   ├── UnsafeInput              refused on purpose: a format that names other files, a path escaping
    │   └── LimitExceeded            over a size, pixel, count or length limit
    ├── StoreUnavailable             the object store as a whole: unreachable, credentials, missing bucket
    └── ClusterUnfit                 the Ray cluster can never run what was asked (resources)

``InvalidInput`` is a ``ValueError`` so that callers written against ``ValueError`` keep working. Anything
that is not an ``RsclipError`` is a bug: the CLI and the jobs show its traceback
(:mod:`rsclip.runtime.reporting`). Types only: which store faults are which is :mod:`rsclip.runtime.faults`.
"""

from __future__ import annotations



class RsclipError(Exception):
    """An expected failure with a message meant for the user."""


class InvalidInput(RsclipError, ValueError):
    """Bad input: an argument, a file, a table content. The message names what was wrong."""


class NotFound(InvalidInput):
    """Something named does not exist (table, tile, model, object, folder)."""


class ModelMismatch(InvalidInput):
    """A model other than the one that embedded the table."""


class UnsafeInput(InvalidInput):
    """Input refused on purpose because opening it could read or run something it should not."""


class LimitExceeded(InvalidInput):
    """Input over one of rsclip's limits (bytes, pixels, patches, characters, rows)."""


class StoreUnavailable(RsclipError):
    """The object store cannot be used at all: unreachable endpoint, rejected credentials, missing bucket."""


class ClusterUnfit(RsclipError):
    """The Ray cluster cannot provide the resources a job asks for, now or after scaling up."""


__all__ = [
    "ClusterUnfit", "InvalidInput", "LimitExceeded", "ModelMismatch", "NotFound", "RsclipError", "StoreUnavailable",
    "UnsafeInput",
]
