"""A search request: the opening every search entry shares (``k``, filters, the open table), validated once.

:meth:`Request.of` checks ``k`` (:func:`validate_k`) and the filters (:meth:`Filters.of
<rsclip.search.filters.Filters.of>`: bbox, near, polygon, where, dates, cloud and nodata), in that order, then
opens the tile table and fits the filters to it (:meth:`~rsclip.search.filters.Filters.on`). The table's
model and embedding size are read on first use (:attr:`Request.model`), so a search that compares stored
vectors only never needs them; :meth:`Request.check_weights` makes sure a model about to encode a query still
resolves to the weights the table records (:func:`check_model_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from rsclip.table import snapshots, tiles
from rsclip.model.sources import model_identity
from rsclip.errors import InvalidInput, ModelMismatch
from rsclip.search.filters import Filters
from rsclip.search.searchers import MAX_K


def validate_k(k) -> int:
    """``k`` as an int in [1, MAX_K]. Raises ``InvalidInput`` otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    return int(k)


def check_model_weights(table, model: str, allow_mismatch: bool = False) -> None:
    """Raise :class:`~rsclip.errors.ModelMismatch` when ``model`` now resolves to other weights than those
    recorded in ``table`` (a folder re-exported in place, another hub revision), unless ``allow_mismatch``.
    A table that records no weights (written by an older rsclip) passes. The weights' hash is computed
    once per process and file state (:func:`~rsclip.model.sources.model_identity`)."""
    if allow_mismatch or tiles.table_weights(table) is None:
        return
    mismatch = tiles.weights_mismatch(table, model, model_identity(model))
    if mismatch:
        raise ModelMismatch(f"{mismatch}: a query encoded with them would not be comparable with the table. "
                            "Restore those weights or embed the table again; to search anyway, pass "
                            "allow_model_mismatch=True (rsclip query --allow-model-mismatch)")


@dataclass(frozen=True)
class Request:
    """One search as asked, validated: the open tile ``table``, ``filters`` fitted to it and ``k`` (None for
    an entry that takes no ``k`` or checks its own)."""

    table: Any
    filters: Filters
    k: int | None = None

    @classmethod
    def of(cls, db, table: str, k: int | None = None, *, bbox=None, near=None, where=None, polygon=None,
           date=None, max_cloud=None, max_nodata=None) -> "Request":
        """The request of a search of ``table`` in ``db``: ``k`` (unless None) and the filters validated, in
        that order, then the table opened. The filters are those of :meth:`Filters.of
        <rsclip.search.filters.Filters.of>`.

        Raises:
            InvalidInput: for ``k`` outside [1, ``MAX_K``] or a malformed filter.
            LimitExceeded: for a ``where`` or polygon over its size limit.
            NotFound: for an unknown table.
        """
        k = None if k is None else validate_k(k)
        filters = Filters.of(bbox=bbox, near=near, where=where, polygon=polygon, date=date, max_cloud=max_cloud,
                             max_nodata=max_nodata)
        opened = snapshots.read_table(db, table)
        return cls(opened, filters.on(opened), k)

    @cached_property
    def model_dim(self) -> tuple[str, int]:
        """``(model, dim)``: the table's model and embedding size, read on first use. Raises ``InvalidInput``
        for a table without model metadata."""
        return tiles.table_model(self.table)

    @property
    def model(self) -> str:
        """The model the table was embedded with (:attr:`model_dim`)."""
        return self.model_dim[0]

    @property
    def dim(self) -> int:
        """The size of the table's embeddings (:attr:`model_dim`)."""
        return self.model_dim[1]

    def check_weights(self, allow_mismatch: bool = False) -> None:
        """:func:`check_model_weights` for the table's model: before a query is encoded with it."""
        check_model_weights(self.table, self.model, allow_mismatch)
