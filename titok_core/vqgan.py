"""MaskGIT-VQGAN: the proxy-code teacher of TiTok stage 1, and the pixel decoder of the released TiTok.

Numerically the official model (1d-tokenizer `modeling/modules/maskgit_vqgan.py`); parameter names
are the official ones, so its checkpoint loads without renaming. Differences that do not change
the numbers: "same" padding is done inside the convolution (no explicit `F.pad` copy), and the
model runs channels-last when asked.

Legend: B batch, C channels, H W image size, h w latent grid (H / 2**(levels-1)), K codebook size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .presets import VQGANConfig
from .quantizer import float32_only


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    # Official Conv2dSame pads (k-1)//2 on each side for odd k at stride 1: the same as padding=k//2.
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a residual.

    When the channel count changes, the official block applies its 1x1 `nin_shortcut` to the
    *output* of conv2 (not to the input) and adds that instead of the input. That is what the
    released weights were trained with, so it is kept.
    """

    def __init__(self, cin: int, cout: int, num_groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, cin, eps=1e-6)
        self.conv1 = _conv(cin, cout, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(cout, cout, 3, bias=False)
        self.nin_shortcut = _conv(cout, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        residual = x if self.nin_shortcut is None else self.nin_shortcut(h)
        return h + residual


class DownBlock(nn.Module):
    """One encoder resolution level: residual blocks, then 2x average-pool unless it is the last."""

    def __init__(self, cin: int, cout: int, cfg: VQGANConfig, downsample: bool):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, cfg.num_groups, cfg.dropout)
            for i in range(cfg.num_res_blocks)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        return F.avg_pool2d(x, 2) if self.downsample else x


class UpBlock(nn.Module):
    """One decoder resolution level: residual blocks, then nearest 2x up-sampling + conv unless level 0."""

    def __init__(self, cin: int, cout: int, cfg: VQGANConfig, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(cin if i == 0 else cout, cout, cfg.num_groups, cfg.dropout)
            for i in range(cfg.num_res_blocks)
        )
        self.upsample_conv = _conv(cout, cout, 3) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class VQGANEncoder(nn.Module):
    """images (B, 3, H, W) -> latents (B, z_channels, h, w)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        ch = [cfg.hidden_channels * m for m in cfg.channel_mult]
        levels = len(ch)
        self.conv_in = _conv(cfg.num_channels, cfg.hidden_channels, 3, bias=False)
        cins = [cfg.hidden_channels] + ch[:-1]
        self.down = nn.ModuleList(DownBlock(cins[i], ch[i], cfg, downsample=i != levels - 1) for i in range(levels))
        self.mid = nn.ModuleList(ResnetBlock(ch[-1], ch[-1], cfg.num_groups, cfg.dropout) for _ in range(cfg.num_res_blocks))
        self.norm_out = nn.GroupNorm(cfg.num_groups, ch[-1], eps=1e-6)
        self.conv_out = _conv(ch[-1], cfg.z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for blk in self.down:
            x = blk(x)
        for blk in self.mid:
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VQGANDecoder(nn.Module):
    """latents (B, z_channels, h, w) -> images (B, 3, H, W), not clamped.

    `up[i]` is resolution level i; the coarsest level (the last index) runs first.
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        ch = [cfg.hidden_channels * m for m in cfg.channel_mult]
        levels = len(ch)
        self.conv_in = _conv(cfg.z_channels, ch[-1], 3)
        self.mid = nn.ModuleList(ResnetBlock(ch[-1], ch[-1], cfg.num_groups, cfg.dropout) for _ in range(cfg.num_res_blocks))
        cins = ch[1:] + [ch[-1]]
        self.up = nn.ModuleList(UpBlock(cins[i], ch[i], cfg, upsample=i != 0) for i in range(levels))
        self.norm_out = nn.GroupNorm(cfg.num_groups, ch[0], eps=1e-6)
        self.conv_out = _conv(ch[0], cfg.num_channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for blk in reversed(self.up):
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VQGANQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup (plain Euclidean, no normalisation)."""

    def __init__(self, codebook_size: int, dim: int, commitment_cost: float = 0.25):
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def distances(self, z: Tensor) -> Tensor:
        """z: (B, C, h, w) -> squared distances (B*h*w, K), rows in (b, y, x) order."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        e = self.embedding.weight
        # |z|^2 + |e|^2 - 2 z.e in one fused addmm, the official expansion (keeps argmin ties identical).
        return torch.addmm(flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None], flat, e.t(), alpha=-2.0)

    def get_code(self, z: Tensor) -> Tensor:
        """z: (B, C, h, w) -> codes (B, h*w) int64, row-major."""
        return self.distances(z).argmin(1).view(z.shape[0], -1)

    def get_soft_code(self, z: Tensor, temp: float = 1.0) -> Tensor:
        """z: (B, C, h, w) -> softmax(-distance / temp) over the codebook, (B, h*w, K)."""
        return F.softmax(-self.distances(z) / temp, dim=-1).view(z.shape[0], -1, self.codebook_size)

    def get_codebook_entry(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """codes (B, h*w) or (B, h, w) -> vectors (B, C, h, w). A flat code row must be square unless `grid` is given."""
        if codes.dim() == 3:
            grid = codes.shape[1:]
            codes = codes.flatten(1)
        elif grid is None:
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes per image is not a square grid; pass grid=(h, w)")
            grid = (side, side)
        return self.embedding(codes).view(codes.shape[0], *grid, -1).permute(0, 3, 1, 2)

    def forward(self, z: Tensor, return_loss: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """z (B, C, h, w) -> (z_q (B, C, h, w), codes (B, h*w), loss or None).

        With `return_loss`, z_q carries the straight-through gradient to z.
        """
        codes = self.get_code(z)
        z_q = self.get_codebook_entry(codes, grid=z.shape[2:])
        loss = None
        if return_loss:
            loss = F.mse_loss(z_q.detach(), z) + self.commitment_cost * F.mse_loss(z_q, z.detach())
            z_q = z + (z_q - z).detach()
        return z_q, codes, loss


class MaskGITVQGAN(nn.Module):
    """The teacher: images in [0, 1] -> 2-D grid of discrete codes -> images in [0, 1]."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = VQGANEncoder(cfg)
        self.quantize = VQGANQuantizer(cfg.codebook_size, cfg.z_channels, cfg.commitment_cost)
        self.decoder = VQGANDecoder(cfg)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images: (B, 3, H, W) float in [0, 1] -> codes (B, h*w) int64, row-major over (h, w)."""
        z = self.encoder(images.to(memory_format=_memory_format(self)))
        # The codebook lookup stays fp32 under autocast: bf16 distances would flip near-ties.
        with float32_only(z.device.type):
            return self.quantize.get_code(z.float())

    @torch.no_grad()
    def decode(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """codes: (B, h*w) or (B, h, w) -> images (B, 3, H, W) clamped to [0, 1]."""
        z_q = self.quantize.get_codebook_entry(codes, grid)
        return self.decoder(z_q.to(memory_format=_memory_format(self))).clamp(0.0, 1.0)


def _memory_format(model: nn.Module) -> torch.memory_format:
    """Match the input layout to the weights' (channels-last models want channels-last input)."""
    for p in model.parameters():
        if p.dim() == 4:
            return torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format

