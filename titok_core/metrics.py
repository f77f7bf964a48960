"""Image and token metrics (no gradients): the one PSNR of the project, and codebook statistics.

Legend: B batch, C codebook size.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def psnr(inputs: Tensor, reconstructions: Tensor, reduction: str = "mean", max_value: float = 1.0) -> Tensor:
    """PSNR in dB of reconstructions clamped to [0, max_value].

    Args:
        inputs / reconstructions: (B, ...) images, e.g. (B, 3, H, W) in [0, 1] (or uint8 with max_value 255).
        reduction: "none" -> (B,) per image; "mean" / "sum" over the batch.

    An exact reconstruction counts as 100 dB (MSE floored at 1e-10 of max_value^2).
    """
    x = inputs.double()
    y = reconstructions.double().clamp(0, max_value)
    mse = (y - x).pow(2).flatten(1).mean(1).clamp_min(1e-10 * max_value**2)
    return reduce(10 * torch.log10(max_value**2 / mse), reduction)


def reduce(per_image: Tensor, reduction: str) -> Tensor:
    """(B,) per-image values -> themselves ("none"), or their "mean" / "sum"."""
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction {reduction!r}: use 'none', 'mean' or 'sum'")


def codebook_stats(counts: Tensor) -> tuple[float, float]:
    """(usage, perplexity) of a histogram of token ids.

    Args:
        counts: (C,) how often each codebook entry was chosen.

    Returns:
        usage: fraction of the C entries chosen at least once.
        perplexity: exp(entropy) of the empirical distribution, in [1, C] (C: uniform use).
    """
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float((counts > 0).double().mean()), float(torch.exp(-(p * p.log()).sum()))
