"""TiTok's vector quantizer: nearest codebook entry, optionally on the unit sphere.

Numerically the official `VectorQuantizer` (1d-tokenizer `modeling/quantizer/quantizer.py`) without
its unused `clustering_vq` option. Always computed in float32, also under autocast.

Legend: B batch, C token_size, N latent tokens, K codebook size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What a quantizer step returns besides z_q.

    Args:
        codes: (B, N) int64 token ids.
        quantizer_loss: codebook_loss + commitment_loss (scalar).
        commitment_loss: commitment_cost * |sg(z_q) - z|^2 (scalar).
        codebook_loss: |z_q - sg(z)|^2 (scalar).
    """

    codes: Tensor
    quantizer_loss: Tensor
    commitment_loss: Tensor
    codebook_loss: Tensor


class VectorQuantizer(nn.Module):
    """z (B, C, 1, N) -> (z_q (B, C, 1, N) with straight-through gradient, QuantizerOutput)."""

    def __init__(self, codebook_size: int, token_size: int, commitment_cost: float = 0.25, use_l2_norm: bool = True):
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_cost = commitment_cost
        self.use_l2_norm = use_l2_norm
        self.embedding = nn.Embedding(codebook_size, token_size)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def _norm(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.use_l2_norm else x

    def codebook(self) -> Tensor:
        """The (K, C) codebook as used for lookup (unit rows with l2 norm)."""
        return self._norm(self.embedding.weight)

    def get_codebook_entry(self, codes: Tensor) -> Tensor:
        """codes (...) int -> vectors (..., C)."""
        return self._norm(self.embedding(codes))

    def forward(self, z: Tensor) -> tuple[Tensor, QuantizerOutput]:
        with float32_only(z.device.type):
            z = z.float().permute(0, 2, 3, 1)  # (B, 1, N, C)
            flat = self._norm(z.reshape(-1, z.shape[-1]))
            e = self.codebook()
            d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
            codes = d.argmin(1)
            z_q = self.get_codebook_entry(codes).view(z.shape)
            # The official code normalises the looked-up rows once more; kept for identical numbers.
            z_q = self._norm(z_q)
            z = self._norm(z)
            commitment_loss = self.commitment_cost * torch.mean((z_q.detach() - z) ** 2)
            codebook_loss = torch.mean((z_q - z.detach()) ** 2)
            z_q = z + (z_q - z).detach()
            out = QuantizerOutput(
                codes=codes.view(z.shape[0], -1),
                quantizer_loss=commitment_loss + codebook_loss,
                commitment_loss=commitment_loss,
                codebook_loss=codebook_loss,
            )
            return z_q.permute(0, 3, 1, 2).contiguous(), out


def float32_only(device_type: str):
    """Disable autocast (codebook lookups stay float32); a no-op on devices autocast does not know."""
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
