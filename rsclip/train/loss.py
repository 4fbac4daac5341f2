"""Symmetric InfoNCE (the CLIP loss) over the *global* batch of every data-parallel worker.

Hugging Face's built-in ``clip_loss`` only sees the local batch, so with W workers of batch B each image
has B - 1 negatives. Here the image and text features of every worker are gathered *with gradient*
(``torch.distributed.nn.functional.all_gather``) before the similarity matrix is built, as open_clip's
``ClipLoss`` does, so each image competes against all W*B - 1 other texts and vice versa.

Gradient bookkeeping under DDP: every rank computes the same global loss L. The backward of the gathering
all_gather sums the gradients that all W ranks send to a rank's own features, giving W * dL/df_local; DDP
then averages parameter gradients over the W ranks, so the result is exactly dL/dtheta, the gradient a
single process would get from the whole global batch. ``logit_scale`` is not gathered: each rank's
gradient is already dL/ds and DDP's average leaves it unchanged.

Local batches may differ in size (a worker dropped unreadable images): features are padded to the
largest local batch for the gather and the padding is removed afterwards.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rsclip.errors import InvalidInput

# CLIP's cap on the learnable inverse temperature: exp(logit_scale) <= 100.
MAX_LOGIT_SCALE = math.log(100.0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``(B_r, D)`` features of every rank in rank order, keeping the autograd graph.

    Returns ``(sum_r B_r, D)``. Without an initialised process group (or with one rank) returns
    ``features`` unchanged.
    """
    if not _distributed():
        return features
    # the public autograd-aware gather (torch 2.13 marks it deprecated in favour of a private module)
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    n_local = torch.tensor([features.shape[0]], device=features.device, dtype=torch.long)
    sizes = [torch.zeros_like(n_local) for _ in range(world)]
    dist.all_gather(sizes, n_local)
    sizes_list = [int(s.item()) for s in sizes]
    n_max = max(sizes_list)
    if features.shape[0] < n_max:  # (B_r, D) -> (n_max, D); zero rows carry no gradient back
        features = F.pad(features, (0, 0, 0, n_max - features.shape[0]))
    with warnings.catch_warnings():  # its replacement is private and not autograd-aware: keep it, quietly
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        parts = all_gather(features)  # W x (n_max, D), differentiable
    return torch.cat([p[:n] for p, n in zip(parts, sizes_list)], dim=0)


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled cosine-similarity logits ``(N, N)`` image->text and their transpose text->image.

    ``image_features`` and ``text_features`` are ``(N, D)`` and L2-normalised; ``logit_scale`` is the
    log inverse temperature (a scalar), clamped to [0, ln 100] here so a diverging temperature cannot
    blow the softmax up.
    """
    scale = logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()
    logits_per_image = scale * image_features @ text_features.t()  # (N, N)
    return logits_per_image, logits_per_image.t()


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: mean of image->text and text->image cross-entropy.

    ``image_features`` and ``text_features`` are this rank's ``(B, D)`` rows (pair i is image i with text
    i); they are normalised here. With ``gather`` and an initialised process group, rows from all ranks
    are gathered with gradient first, so the loss (identical on every rank) is the single-process loss of
    the concatenated global batch. Raises :class:`InvalidInput` when the two batches differ in size.
    """
    if image_features.shape != text_features.shape:
        raise InvalidInput(
            f"image and text features must pair up: {tuple(image_features.shape)} vs {tuple(text_features.shape)}"
        )
    image_features = F.normalize(image_features.float(), dim=-1)  # (B, D)
    text_features = F.normalize(text_features.float(), dim=-1)  # (B, D)
    if gather:
        image_features = gather_with_grad(image_features)  # (N, D), N = sum of local batches
        text_features = gather_with_grad(text_features)  # (N, D)
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale.float())
    labels = torch.arange(image_features.shape[0], device=image_features.device)  # (N,) diagonal pairs
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


@torch.no_grad()
def clamp_logit_scale_(logit_scale: torch.nn.Parameter) -> None:
    """Keep the stored parameter inside [0, ln 100] after an optimiser step (as CLIP/open_clip do)."""
    logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
