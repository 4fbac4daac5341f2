"""rsclip.train.loss: the gathered loss over 2 real gloo workers equals the single-process loss and gradients."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from infra.local_stack import free_port
from rsclip.train.loss import MAX_LOGIT_SCALE, clamp_logit_scale_, contrastive_loss

IMAGE_IN, TEXT_IN, DIM = 12, 10, 6


class Towers(torch.nn.Module):
    """Two linear towers and a learnable temperature: enough to check what the loss does with gradients."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.image = torch.nn.Linear(IMAGE_IN, DIM)
        self.text = torch.nn.Linear(TEXT_IN, DIM)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images, texts):
        return self.image(images), self.text(texts)


def _pairs(n: int):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, IMAGE_IN, generator=g), torch.randn(n, TEXT_IN, generator=g)


def _single(n: int, gather: bool = True):
    model = Towers()
    images, texts = _pairs(n)
    loss = contrastive_loss(*model(images, texts), model.logit_scale, gather=gather)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


# (per-rank sizes, gather): equal and uneven local batches, and a local-only loss for contrast
CASES = [((4, 4), True), ((3, 5), True), ((4, 4), False)]


def _worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = []
        for sizes, gather in CASES:
            model = torch.nn.parallel.DistributedDataParallel(Towers())
            images, texts = _pairs(sum(sizes))
            start = sum(sizes[:rank])
            sl = slice(start, start + sizes[rank])
            loss = contrastive_loss(*model(images[sl], texts[sl]), model.module.logit_scale, gather=gather)
            loss.backward()  # DDP averages the gradients over the two ranks
            grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
            results.append({"loss": loss.detach(), "grads": grads})
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """Per case, the loss and DDP gradients of both ranks of a real 2-process gloo group."""
    out = str(tmp_path_factory.mktemp("ddp") / "result")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    per_rank = [torch.load(f"{out}.{r}") for r in range(2)]
    return [[per_rank[r][i] for r in range(2)] for i in range(len(CASES))]


@pytest.mark.parametrize("case", [0, 1], ids=["equal", "uneven"])
def test_gathered_loss_and_grads_match_single_process(distributed_results, case):
    sizes, _ = CASES[case]
    ref_loss, ref_grads = _single(sum(sizes))
    for res in distributed_results[case]:
        torch.testing.assert_close(res["loss"], ref_loss, rtol=1e-5, atol=1e-6)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(res["grads"][name], grad, rtol=1e-4, atol=1e-6)


def test_local_only_loss_differs(distributed_results):
    """Without gathering, each rank only sees its own negatives: the loss is not the global one."""
    ref_loss, _ = _single(8)
    assert all(abs(float(r["loss"]) - float(ref_loss)) > 1e-3 for r in distributed_results[2])


def test_loss_is_symmetric_infonce():
    img = F.normalize(torch.randn(5, DIM), dim=-1)
    txt = F.normalize(torch.randn(5, DIM), dim=-1)
    scale = torch.tensor(1.5)
    logits = scale.exp() * img @ txt.t()
    labels = torch.arange(5)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(contrastive_loss(img, txt, scale), expected)
    # perfectly matched, well separated pairs give a near-zero loss; swapped pairs a large one
    eye = torch.eye(5, DIM)
    assert contrastive_loss(eye, eye, torch.tensor(MAX_LOGIT_SCALE)) < 1e-3
    assert contrastive_loss(eye, eye.roll(1, 0), torch.tensor(MAX_LOGIT_SCALE)) > 10
    with pytest.raises(ValueError):
        contrastive_loss(img, txt[:4], scale)


def test_temperature_is_clamped():
    img = F.normalize(torch.randn(4, DIM), dim=-1)
    big = torch.nn.Parameter(torch.tensor(10.0))
    capped = contrastive_loss(img, img, torch.tensor(MAX_LOGIT_SCALE))
    torch.testing.assert_close(contrastive_loss(img, img, big), capped)
    clamp_logit_scale_(big)
    assert float(big.detach()) == pytest.approx(MAX_LOGIT_SCALE)
