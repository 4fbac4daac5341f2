"""Every random stream of a training run, derived from the one ``TrainConfig.seed``.

A stream is named by its purpose and coordinates, never by where or when it is drawn, so results do not
depend on how Ray places blocks, batches or tasks, nor on a worker being restarted:

- ``torch`` per rank: model initialisation left to torch, dropout (:func:`stream_seed` ``(seed, TORCH, rank)``);
- the order and partition of the training samples per epoch (``ORDER, epoch``) and the local shuffle buffer per
  epoch and rank (``SHUFFLE, epoch, rank``);
- the augmentation and the caption choice of one sample in one epoch: :func:`sample_rng` ``(seed, epoch,
  key)``, ``key`` being the sample's own name. The decode stage learns the epoch from its stage settings
  (``StageConfig.epoch``): each epoch builds its own dataset, so nothing has to be counted at run time.

Same seed, sample and epoch: the same view; another epoch or another seed: another view.
"""

from __future__ import annotations

import hashlib

import numpy as np

TORCH, ORDER, SHUFFLE, AUGMENT = "torch", "order", "shuffle", "augment"
_MASK64 = (1 << 64) - 1


def _word(key: int | str) -> int:
    """A non-negative 64-bit word for one coordinate (strings by a stable hash, not Python's salted one)."""
    if isinstance(key, str):
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return int(key) & _MASK64  # negative seeds are valid: two's complement


def stream_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named by ``keys`` (e.g. ``(TORCH, rank)``) of the run seeded ``seed``."""
    words = np.random.SeedSequence([_word(seed), *(_word(k) for k in keys)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & ((1 << 63) - 1)


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one sample's augmentation and caption choice in ``epoch``; ``key`` names the sample."""
    return np.random.default_rng(np.random.SeedSequence([_word(seed), _word(AUGMENT), _word(epoch), _word(key)]))
