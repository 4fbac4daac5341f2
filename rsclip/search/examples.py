"""Example search: rank tiles against a few positive and negative examples (the Earth Index / GeoVibes loop).

Each example is a tile id of the table (its stored embedding: a 32-hex-character string is always read as
one), an image (a path or URI of an existing image, a PIL image, an HWC uint8 array) or a text (any other
string). The query vector is GeoVibes' ::

    q = normalise(2 * mean(positives) - mean(negatives))      # q = normalise(mean(positives)) without negatives

on the unit embeddings, so negatives push the search away from what they share with the positives without
outweighing them. The examples themselves (tile ids given, and the whole-image tiles of image paths) are left
out of the results, which still hold ``k`` rows whenever ``k`` others qualify.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from rsclip.model.vectors import example_direction
from rsclip.table import rows, tiles
from rsclip.table.rows import is_tile_id
from rsclip.errors import InvalidInput, LimitExceeded
from rsclip.search.encoding import is_image_query, query_vector, read_query_image, self_ids
from rsclip.search.request import Request
from rsclip.search.searchers import Found, find, searcher_for
from rsclip.search.slots import searching

# Most examples of one search (positives and negatives together).
MAX_EXAMPLES = 1000


def example_vectors(table, examples: Sequence, model: str, dim: int) -> tuple[np.ndarray, set[str]]:
    """``(vectors, ids)``: the unit vector of each example (in order) and the tile ids the results must
    leave out (tile examples and the whole-image tiles of image paths). Raises ``InvalidInput`` for bad
    examples (blank text, unreadable image, wrong vector size), ``NotFound`` for unknown tile ids."""
    vectors: list[np.ndarray | None] = [None] * len(examples)
    leave_out: set[str] = set()
    tile_at = [i for i, e in enumerate(examples) if is_tile_id(e)]
    if tile_at:
        ids = [examples[i] for i in tile_at]
        for i, vector in zip(tile_at, rows.vectors_by_id(table, ids)):
            vectors[i] = vector
        leave_out.update(ids)
    for i, example in enumerate(examples):
        if vectors[i] is not None:
            continue
        if isinstance(example, (str, os.PathLike)) and is_image_query(example):
            image = read_query_image(example)
            leave_out |= self_ids(example, image)
            example = image
        vectors[i] = query_vector(example, model, dim)
    out = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), leave_out


def combine(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """The unit query vector of example vectors: ``normalise(2 * mean(P) - mean(N))`` (no negatives:
    ``normalise(mean(P))``). Raises ``InvalidInput`` without positives or when the two cancel out."""
    if len(positives) == 0:
        raise InvalidInput("an example search needs at least one positive example")
    vector = example_direction(positives, negatives)
    if vector is None:
        raise InvalidInput("the positive and negative examples cancel out: no direction is left to search")
    return vector.astype(np.float32)


def checked_examples(positive, negative) -> tuple[list, list]:
    """``positive`` and ``negative`` as lists (one example may be given bare). Raises ``InvalidInput`` when
    there is no positive, ``LimitExceeded`` over :data:`MAX_EXAMPLES` in all."""
    def as_list(value) -> list:
        if value is None:
            return []
        single = isinstance(value, (str, os.PathLike, Image.Image)) or (
            isinstance(value, np.ndarray) and (value.dtype == np.uint8 or value.ndim == 1))
        return [value] if single else list(value)  # one image or vector, or a sequence (2-D array: vectors)

    pos, neg = as_list(positive), as_list(negative)
    if not pos:
        raise InvalidInput("an example search needs at least one positive example (tile id, image or text)")
    if len(pos) + len(neg) > MAX_EXAMPLES:
        raise LimitExceeded(f"{len(pos) + len(neg)} examples given, more than {MAX_EXAMPLES}")
    return pos, neg


def example_query(request: Request, positive, negative=(), *, allow_model_mismatch: bool = False
                  ) -> tuple[np.ndarray, set[str]]:
    """``(query vector, ids to leave out)`` of examples against the request's tile table (see the module).
    Texts and images are encoded with the table's model (``allow_model_mismatch`` as for ``rsclip.query``)."""
    pos, neg = checked_examples(positive, negative)
    if not all(is_tile_id(e) for e in (*pos, *neg)):
        request.check_weights(allow_model_mismatch)
    vectors, leave_out = example_vectors(request.table, [*pos, *neg], request.model, request.dim)
    return combine(vectors[: len(pos)], vectors[len(pos):]), leave_out


def search_examples(request: Request, positive, negative=(), *, resident: bool = False,
                    allow_model_mismatch: bool = False) -> Found:
    """The ``request.k`` tiles nearest the query vector of the examples under the request's filters, the
    examples left out (:func:`query_examples`; its frame: ``.frame()``)."""
    vector, leave_out = example_query(request, positive, negative, allow_model_mismatch=allow_model_mismatch)
    drop = lambda frame: frame[tiles.ID].isin(leave_out).to_numpy()  # noqa: E731
    return find(searcher_for(request.table, resident=resident), vector, request.k, request.filters, drop=drop,
                extra=len(leave_out))


@searching()
def query_examples(db, positive, negative=(), k: int = 10, *, table: str = tiles.DEFAULT_TABLE, bbox=None,
                   near=None, polygon=None, where=None, resident: bool = False,
                   allow_model_mismatch: bool = False, date=None, max_cloud=None,
                   max_nodata=None) -> pd.DataFrame:
    """The ``k`` tiles nearest the query vector of ``positive`` and ``negative`` examples (module doc),
    under the shared filters, the examples left out.

    Args:
        db: A local path, an ``s3://`` URI or a LanceDB connection.
        positive: Examples to search for (at least one): tile ids, images or texts; one may be given bare.
        negative: Examples to search away from.
        k: How many tiles to return, in [1, 10000].
        table: As for :func:`rsclip.query`.
        bbox: As for :func:`rsclip.query`.
        near: As for :func:`rsclip.query`.
        polygon: As for :func:`rsclip.query`.
        where: As for :func:`rsclip.query`.
        resident: As for :func:`rsclip.query`.
        allow_model_mismatch: As for :func:`rsclip.query`: texts and images are encoded with the table's model.
        date: As for :func:`rsclip.query`.
        max_cloud: As for :func:`rsclip.query`.
        max_nodata: As for :func:`rsclip.query`.

    Returns:
        A DataFrame with the columns of :func:`rsclip.query`.

    Raises:
        InvalidInput: Without a positive, for bad examples or filters.
        NotFound: For an unknown table or tile id.
        LimitExceeded: For more than :data:`MAX_EXAMPLES` examples.
    """
    request = Request.of(db, table, k, bbox=bbox, near=near, where=where, polygon=polygon, date=date,
                         max_cloud=max_cloud, max_nodata=max_nodata)
    return search_examples(request, positive, negative, resident=resident,
                           allow_model_mismatch=allow_model_mismatch).frame()
