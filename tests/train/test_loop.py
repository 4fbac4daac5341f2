"""rsclip.train.loop without Ray: one optimiser step, one epoch, validation and checkpoints on a tiny CLIP and
real RSICD scenes, called as the GPU benchmark and a notebook would call them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rsclip.model.clip import load_model
from rsclip.errors import InvalidInput
from rsclip.train import data, loop, metrics, transforms
from rsclip.train.config import TrainConfig, TrainState
from rsclip.train.loss import MAX_LOGIT_SCALE
from tests.helpers import RSICD_DIR, require_shared_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    """16 real training scenes of 16 classes."""
    require_shared_data()
    samples = data.read_samples([str(RSICD_DIR)], split="train")[::113][:16]
    assert len({s[data.LABEL] for s in samples}) == 16
    return samples


def _learner(model_dir, **settings) -> loop.Learner:
    cfg = TrainConfig(**{"lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.0, **settings})
    torch.manual_seed(0)
    return loop.build_learner(*loop.load_clip(model_dir), cfg, device=CPU, total_steps=1000)


def _decode(samples: list[dict], learner: loop.Learner, **stage) -> dict[str, np.ndarray]:
    cfg = transforms.StageConfig.from_preprocess(learner.preprocess, **{"image_aug": False, "text_aug": False,
                                                                          **stage})
    batch = {k: np.array([s[k] for s in samples], dtype=object) for k in samples[0]}
    return transforms.decode_batch(batch, cfg)


def _weights(learner: loop.Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.core.state_dict().items()}


def test_train_step_lowers_the_loss_on_real_scenes(tiny_model, scenes):
    learner = _learner(tiny_model)
    batch = _decode(scenes, learner)
    losses = [loop.train_step(learner, [batch]) for _ in range(8)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.3, losses  # 3.3 -> 2.4 when it learns; flat when it does not
    assert learner.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * loop.lr_factor(8, 0, 1000))
    with pytest.raises(InvalidInput):
        loop.train_step(learner, [])


def test_accumulated_micro_batches_are_averaged_and_the_temperature_is_clamped(tiny_model, scenes):
    """Two copies of one micro-batch make the same step as that micro-batch alone (the mean of equal gradients),
    and a temperature beyond CLIP's cap comes back inside it after the step."""
    one, two = _learner(tiny_model), _learner(tiny_model)
    batch = _decode(scenes[:8], one)
    for learner in (one, two):
        with torch.no_grad():
            learner.core.logit_scale.fill_(MAX_LOGIT_SCALE + 1.0)
    assert loop.train_step(one, [batch]) == pytest.approx(loop.train_step(two, [batch, batch]), rel=1e-6)
    for name, w in _weights(one).items():
        torch.testing.assert_close(w, _weights(two)[name], rtol=1e-5, atol=1e-6, msg=name)
    assert float(one.core.logit_scale.detach()) <= MAX_LOGIT_SCALE + 1e-6
    three = _learner(tiny_model)
    loop.train_step(three, [batch, _decode(scenes[8:], three)])
    assert any(not torch.equal(w, _weights(three)[k]) for k, w in _weights(one).items())


def test_run_epoch_accumulates_skips_unreadable_rows_checkpoints_and_resumes(tiny_model, scenes):
    learner = _learner(tiny_model, accum_steps=2, checkpoint_every_steps=1)
    micro = [_decode(scenes[i:i + 4], learner) for i in range(0, 16, 4)]
    micro[1] = {**micro[1], data.OK: np.array([True, False, True, True])}  # one unreadable image
    micro.append({**micro[0], data.OK: np.zeros(4, dtype=bool)})  # all unreadable: no step of its own
    state, seen = TrainState(), []
    record = loop.run_epoch(learner, micro, state, on_checkpoint=lambda loss: seen.append((state.step, loss)))
    assert (state.step, state.batch_in_epoch, state.samples_seen) == (2, 4, 15)
    assert record["epoch"] == 1 and record["step"] == 2
    assert (record["train_samples"], record["skipped_images"]) == (15, 5)
    assert [s for s, _ in seen] == [1, 2] and all(math.isfinite(loss) for _, loss in seen)
    assert record["lr"] == pytest.approx(1e-3 * loop.lr_factor(2, 0, 1000))
    assert 1 / 100 <= record["temperature"] <= 1.0

    # resumed after its first step: the first two micro-batches are skipped, and max_steps ends the epoch
    resumed = _learner(tiny_model, accum_steps=2, max_steps=3)
    state = TrainState(step=1, batch_in_epoch=2)
    record = loop.run_epoch(resumed, micro, state)
    assert (state.step, state.batch_in_epoch, record["train_samples"]) == (2, 4, 8)
    state = TrainState(step=2, batch_in_epoch=0)
    loop.run_epoch(resumed, micro, state)
    assert (state.step, state.batch_in_epoch) == (3, 2) and state.reached(3)


def test_validate_equals_metrics_evaluate(tiny_model, scenes):
    learner = _learner(tiny_model)
    val = data.read_samples([str(RSICD_DIR)], split="val")[::30][:10]
    decoded = _decode(val, learner, keep_captions=True)
    decoded[data.OK][3] = False  # counted as skipped, left out of the metrics
    rows = loop.collect_val_rows([decoded])
    classes = data.class_names(val)
    got = loop.validate(learner, rows, classes=classes)
    assert learner.model.training  # back in training mode

    keep = [i for i in range(10) if i != 3]
    want = metrics.evaluate(load_model(tiny_model, device="cpu"), [decoded[data.IMAGE][i] for i in keep],
                            [val[i][data.CAPTIONS] for i in keep], [val[i][data.LABEL] for i in keep],
                            classes=classes)
    assert got == pytest.approx({**{f"val_{k}": v for k, v in want.items()}, "val_skipped_images": 1})
    assert got["val_n_images"] == 9


def test_checkpoint_round_trip_continues_identically(tiny_model, scenes, tmp_path):
    learner = _learner(tiny_model)
    batch = _decode(scenes, learner)
    loop.train_step(learner, [batch])
    state = TrainState(epoch=1, step=1, batch_in_epoch=3, samples_seen=16, history=[{"epoch": 1}])
    folder = loop.save_checkpoint(tmp_path / "ckpt", learner, state)
    restored = loop.build_learner(*loop.load_clip(folder), learner.cfg, device=CPU, total_steps=1000)
    assert loop.resume(restored, folder) == state
    # the same next step from the original and from the checkpoint: weights, optimiser and schedule restored
    torch.manual_seed(1)
    a = loop.train_step(learner, [batch])
    torch.manual_seed(1)
    b = loop.train_step(restored, [batch])
    assert a == pytest.approx(b, rel=1e-6)
    for name, w in _weights(learner).items():
        torch.testing.assert_close(w, _weights(restored)[name], rtol=1e-5, atol=1e-6, msg=name)

    (folder / loop.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInput, match="not an rsclip training checkpoint"):
        loop.resume(restored, folder)
