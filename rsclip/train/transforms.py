"""From samples to training rows: augmentation, the Ray Data decode stage, and each rank's share of an epoch.

:func:`build_dataset` turns samples (:mod:`rsclip.train.data`) into a Ray Dataset whose CPU tasks decode
(and augment) them into fixed-size uint8 ``(S, S, 3)`` images with one caption each; a row whose image
cannot be decoded is kept with ``ok=False`` so that the training loop can drop and count it (never fatal).
:func:`decode_samples` is the same preparation without Ray, for evaluation.

Randomness is reproducible (:mod:`rsclip.train.seeds`): a sample's augmentation and caption choice come from
a generator of ``(StageConfig.seed, StageConfig.epoch, the sample's name)``, so they do not depend on which
task, batch or block the sample lands in. The epoch is a setting of the stage, not a count kept at run
time: the training worker builds one dataset per epoch (:func:`epoch_shard`, then :func:`build_dataset`),
so a restarted worker, a retried task or a resumed run sees exactly the views it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from rsclip.geo import images
from rsclip.model.preprocess import ImagePreprocess, prepare_image as prepare_model_image
from rsclip.errors import InvalidInput
from rsclip.train.data import CAPTION, CAPTIONS, IMAGE, IMAGE_BYTES, LABEL, NAME, OK
from rsclip.train.seeds import ORDER, sample_rng, stream_seed

log = logging.getLogger(__name__)

DECODE_TASK_RETRIES = 2  # attempts after the first for a decode task that raised (see build_dataset)
MAX_DATASET_BLOCKS = 64


@dataclass(frozen=True)
class AugmentConfig:
    """Image augmentation for aerial scenes (no canonical "up", so flips and 90 degree turns are free)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5
    rotate90: bool = True
    brightness: float = 0.2  # colour jitter: factors drawn from [1 - j, 1 + j]
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass(frozen=True)
class StageConfig:
    """What the decode stage needs: output size, whether and how to augment, caption choice, and which
    random views: those of ``epoch`` in the run seeded ``seed``."""

    height: int = 224
    width: int = 224
    preprocess: ImagePreprocess = field(default_factory=ImagePreprocess)
    image_aug: bool = True
    text_aug: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    keep_captions: bool = False  # evaluation needs every caption of an image
    seed: int = 0
    epoch: int = 0

    @classmethod
    def from_preprocess(cls, preprocess: ImagePreprocess, **kw) -> "StageConfig":
        """A stage whose output size is the model's crop size."""
        return cls(height=preprocess.crop_height, width=preprocess.crop_width, preprocess=preprocess, **kw)

    def for_epoch(self, epoch: int) -> "StageConfig":
        """The same stage drawing the views of ``epoch``."""
        return dataclasses.replace(self, epoch=epoch)


def prepare_image(image: np.ndarray, cfg: StageConfig) -> np.ndarray:
    """The model's deterministic preprocessing up to normalisation (``rsclip.model.preprocess.prepare_image``)."""
    return prepare_model_image(image, cfg.preprocess)


def augment_image(image: np.ndarray, cfg: StageConfig, rng: np.random.Generator) -> np.ndarray:
    """A random training view ``(height, width, 3)`` uint8 of an ``(H, W, 3)`` uint8 image.

    Random resized crop (area ``crop_scale``, aspect ``crop_ratio``, bicubic), horizontal and vertical
    flips, a random multiple of 90 degrees, and brightness/contrast/saturation jitter.
    """
    aug = cfg.augment
    h, w = image.shape[:2]
    for _ in range(10):  # torchvision's RandomResizedCrop sampling, with its centre-crop fallback
        area = h * w * rng.uniform(*aug.crop_scale)
        ratio = float(np.exp(rng.uniform(np.log(aug.crop_ratio[0]), np.log(aug.crop_ratio[1]))))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(image[top : top + ch, left : left + cw])
    out = np.asarray(crop.resize((cfg.width, cfg.height), Image.BICUBIC))
    if rng.random() < aug.hflip:
        out = out[:, ::-1]
    if rng.random() < aug.vflip:
        out = out[::-1]
    if aug.rotate90 and cfg.height == cfg.width:
        out = np.rot90(out, int(rng.integers(0, 4)))
    return jitter_colour(np.ascontiguousarray(out), aug, rng)


def jitter_colour(image: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation scaled by random factors, in random order; uint8 in and out."""
    x = image.astype(np.float32)
    ops = []
    if aug.brightness:
        ops.append(("b", rng.uniform(1 - aug.brightness, 1 + aug.brightness)))
    if aug.contrast:
        ops.append(("c", rng.uniform(1 - aug.contrast, 1 + aug.contrast)))
    if aug.saturation:
        ops.append(("s", rng.uniform(1 - aug.saturation, 1 + aug.saturation)))
    for i in rng.permutation(len(ops)):
        kind, f = ops[i]
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W) luma
        if kind == "b":
            x = x * f
        elif kind == "c":
            x = (x - grey.mean()) * f + grey.mean()
        else:
            x = (x - grey[..., None]) * f + grey[..., None]
        x = np.clip(x, 0, 255)
    return x.round().astype(np.uint8)


def load_image(sample: dict[str, Any]) -> np.ndarray:
    """Decode a sample's image (inline bytes or its URI). Raises :class:`InvalidInput` naming it when unreadable."""
    data = sample.get(IMAGE_BYTES)
    if data is not None and len(data):
        # bytes in a manifest's column claim no format: the row's name (m.parquet#3) is not a file name
        return images.decode_image(bytes(data), str(sample.get(NAME) or "<bytes>"), claim="")
    return images.read_image(sample[IMAGE])


def _view_key(batch: dict[str, np.ndarray], i: int) -> str:
    """The name a sample's random views are keyed by (its ``name``; the image URI where a batch has none)."""
    names = batch.get(NAME)
    return str(names[i]) if names is not None and len(names) > i else str(batch[IMAGE][i])


def decode_batch(batch: dict[str, np.ndarray], cfg: StageConfig) -> dict[str, np.ndarray]:
    """The Ray Data stage: samples in, ``image`` uint8 ``(B, S, S, 3)``, ``caption``, ``label``, ``ok`` out.

    Unreadable images become zero images with ``ok=False`` (and a warning naming them) so that nothing
    upstream fails; the training loop drops and counts them. With ``keep_captions`` the ``captions``
    lists pass through as JSON strings (evaluation scores every caption of an image). Each sample's
    augmentation and caption come from its own generator (``cfg.seed``, ``cfg.epoch``, its name).
    """
    n = len(batch[CAPTIONS])
    out_images = np.zeros((n, cfg.height, cfg.width, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    chosen = []
    for i in range(n):
        rng = sample_rng(cfg.seed, cfg.epoch, _view_key(batch, i))
        captions = [str(c) for c in batch[CAPTIONS][i]]
        pick = int(rng.integers(len(captions))) if captions else 0  # drawn always: the image stream stays put
        chosen.append(captions[pick if cfg.text_aug else 0] if captions else "")
        try:
            raw = load_image({k: batch[k][i] for k in (IMAGE, IMAGE_BYTES, NAME) if k in batch})
        except InvalidInput as exc:
            log.warning("skipping unreadable image: %s", exc)
            continue
        out_images[i] = augment_image(raw, cfg, rng) if cfg.image_aug else prepare_image(raw, cfg)
        ok[i] = True
    out = {IMAGE: out_images, CAPTION: np.array(chosen, dtype=object), LABEL: batch[LABEL], OK: ok}
    if cfg.keep_captions:
        out[CAPTIONS] = np.array([json.dumps(list(map(str, c))) for c in batch[CAPTIONS]], dtype=object)
    return out


def epoch_shard(samples: Sequence[dict[str, Any]], *, seed: int, epoch: int, rank: int = 0, world: int = 1
                ) -> list[dict[str, Any]]:
    """The samples rank ``rank`` of ``world`` trains on in ``epoch``, in training order.

    All samples in a seeded per-epoch order, dealt out in turn; every rank gets ``len(samples) // world`` so
    that all ranks take the same number of steps (the remainder sits out this epoch; other samples the next).
    """
    order = np.random.default_rng(stream_seed(seed, ORDER, epoch)).permutation(len(samples))
    share = order[: len(samples) // world * world][rank::world]
    return [samples[int(i)] for i in share]


def build_dataset(samples: Sequence[dict[str, Any]], cfg: StageConfig, *, num_cpus: float = 0.5,
                  batch_size: int = 32):
    """A Ray Dataset that decodes (and, per ``cfg``, augments) ``samples`` in CPU tasks, in their order.

    The views are those of ``cfg.epoch``: build one dataset per epoch (``cfg.for_epoch(e)``). Rows come out
    in the order of ``samples`` so a seeded run trains on the same batches. ``num_cpus`` per task is
    fractional so decode tasks and training workers share small nodes. Raises :class:`InvalidInput` for
    no samples.
    """
    import ray.data

    if not samples:
        raise InvalidInput("no samples to build a dataset from")
    blocks = max(1, min(len(samples) // batch_size, MAX_DATASET_BLOCKS))
    ds = ray.data.from_items(list(samples), override_num_blocks=blocks)
    ds = ds.map_batches(decode_batch, fn_kwargs={"cfg": cfg}, batch_size=batch_size, batch_format="numpy",
                        num_cpus=num_cpus)
    # Unreadable images never raise here (they come out with ok=False), so an exception out of a decode task
    # is the store or the process (an S3 timeout, a worker's import race): retry the block before failing
    # the training run. A fault that persists still fails after the last attempt.
    ds.context.retried_map_errors = True
    ds.context.max_map_retries = DECODE_TASK_RETRIES
    ds.context.execution_options.preserve_order = True
    return ds


def decode_samples(samples: Sequence[dict[str, Any]], cfg: StageConfig, threads: int = 4
                   ) -> tuple[list[np.ndarray], list[int]]:
    """Deterministically prepared images of ``samples`` without Ray (evaluation), and the skipped indices."""
    def one(sample):
        try:
            return prepare_image(load_image(sample), cfg)
        except InvalidInput as exc:
            log.warning("skipping unreadable image: %s", exc)
            return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        prepared = list(pool.map(one, samples))
    skipped = [i for i, im in enumerate(prepared) if im is None]
    return [im for im in prepared if im is not None], skipped
