"""Training the masked-token generators: random masking of token sequences and the loss.

Numerically the official training step (1d-tokenizer `ImageBert.masking_input_tokens` and
`MLMLoss`): per sequence a time t ~ U(0, 1), round(N * arccos(t) / (pi/2)) positions masked (at
least one), chosen by a random permutation; cross-entropy with label smoothing over all positions,
weighted 1 on masked and `unmasked_weight` on the others.

Legend: b batch, n positions (N), k codebook (K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def num_masked(timesteps: Tensor, seq_len: int) -> Tensor:
    """Masked positions per sequence for times t in [0, 1] (arccos schedule): t = 0 masks all,
    t = 1 masks one. (B,) float -> (B,) float holding integers."""
    ratio = (torch.acos(timesteps) / (math.pi * 0.5)).clamp(min=1e-6, max=1.0)
    return (seq_len * ratio).round().clamp(min=1)  # round half to even, as torch.round


def mask_tokens(
    tokens: Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    timesteps: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask token sequences for a training step.

    Args:
        tokens: (B, N) int64 image-token ids.
        mask_id: the [MASK] id (the generator config's `mask_token_id`, = codebook size K).
        generator: random-number generator (default: torch's global one). With the default, the
            draws are exactly the official ones: B times first, then a (B, N) permutation draw.
        timesteps: (B,) times in [0, 1] to use instead of drawing them (only the permutation is drawn).

    Returns:
        masked ids (B, N) int64 (masked positions hold `mask_id`) and the mask (B, N) bool.
    """
    b, n = tokens.shape
    if timesteps is None:
        timesteps = torch.empty(b, dtype=torch.float32, device=tokens.device).uniform_(0, 1, generator=generator)
    count = num_masked(timesteps.to(device=tokens.device, dtype=torch.float32), n)  # (b,)
    # A uniformly random subset of `count` positions: those whose rank in a random order is small.
    ranks = torch.rand(b, n, generator=generator, device=tokens.device).argsort(dim=-1)
    mask = ranks < count[:, None]
    return torch.where(mask, mask_id, tokens), mask


def masked_token_loss(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    label_smoothing: float = 0.1,
    unmasked_weight: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """The generator's training loss and its token accuracy.

    Args:
        logits: (B, N, K) the generator's output for the masked input.
        targets: (B, N) int64 the unmasked token ids.
        mask: (B, N) bool, True where the input was masked.
        label_smoothing: cross-entropy label smoothing (official 0.1).
        unmasked_weight: loss weight of positions that were not masked (official 0.1; masked: 1).

    Returns:
        loss: () sum(ce * w) / (sum(w) + 1e-8), over all positions.
        accuracy: () fraction of masked positions predicted right (argmax), averaged over sequences;
            no gradient.
    """
    b, n, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * n, k).float(), targets.reshape(b * n), reduction="none",
                         label_smoothing=label_smoothing).view(b, n)
    m = mask.to(ce.dtype)
    weights = (1.0 - m) * unmasked_weight + m
    loss = (ce * weights).sum() / (weights.sum() + 1e-8)
    with torch.no_grad():
        correct = (logits.argmax(dim=-1) == targets).to(ce.dtype)
        accuracy = ((correct * m).sum(dim=1) / (m.sum(dim=1) + 1e-8)).mean()
    return loss, accuracy
