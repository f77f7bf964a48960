"""Patch discriminator for TiTok stage 2 (the official recipe's "NLayerDiscriminator").

Architecture as in 1d-tokenizer `modeling/modules/discriminator.py` (a StyleGAN-flavoured patch
discriminator): a 5x5 stem, `num_stages` x (3x3 conv, 2x blur-downsample, GroupNorm, LeakyReLU 0.1),
an adaptive max-pool to a fixed 16x16 grid, and a 1x1 + 5x5 head to one logit per patch.

Legend: B batch, C channels, H W image size, p pooled grid side (16).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Binomial blur kernels by size (outer product with itself, normalised to sum 1).
_BLUR_TAPS = {3: (1.0, 2.0, 1.0), 4: (1.0, 3.0, 3.0, 1.0), 5: (1.0, 4.0, 6.0, 4.0, 1.0)}


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the patch discriminator.

    Args:
        num_channels: image channels.
        hidden_channels: channels after the stem; stage i outputs hidden * 2**i.
        num_stages: downsampling stages (each halves the resolution).
        blur_kernel_size: 3, 4 or 5 for blur-downsampling; 0 for 2x average pooling.
        pool_size: side of the adaptive max-pool before the head (16 in the official model).
        num_groups: GroupNorm groups (32 in the official model); channels must divide by it.
    """

    num_channels: int = 3
    hidden_channels: int = 128
    num_stages: int = 3
    blur_kernel_size: int = 4
    pool_size: int = 16
    num_groups: int = 32

    def __post_init__(self) -> None:
        if self.num_stages < 1:
            raise ValueError("a discriminator needs num_stages >= 1")
        if self.blur_kernel_size not in (0, *_BLUR_TAPS):
            raise ValueError(f"blur_kernel_size {self.blur_kernel_size}: use 3, 4, 5, or 0 for average pooling")
        if self.hidden_channels % self.num_groups:
            raise ValueError(f"hidden_channels {self.hidden_channels} is not divisible by num_groups {self.num_groups}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "official": DiscriminatorConfig(),
    # Same layers, 1/4 of the width and one stage less: a 2-core CPU trains it in milliseconds per image.
    "debug": DiscriminatorConfig(hidden_channels=32, num_stages=2),
}


class BlurDownsample(nn.Module):
    """Depthwise binomial blur with stride 2 (anti-aliased 2x downsampling).

    Padding follows the official BlurBlock: "same" padding computed for a 4-tap, stride-2 window
    whatever the kernel size, so output sizes match the official model for every kernel.
    """

    kernel: Tensor

    def __init__(self, size: int = 4):
        super().__init__()
        taps = torch.tensor(_BLUR_TAPS[size])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None], persistent=False)

    @staticmethod
    def _pad(n: int) -> int:
        return max((math.ceil(n / 2) - 1) * 2 + 4 - n, 0)

    def forward(self, x: Tensor) -> Tensor:
        c, h, w = x.shape[-3:]
        ph, pw = self._pad(h), self._pad(w)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.kernel.expand(c, 1, -1, -1).to(x.dtype), stride=2, groups=c)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)  # "same" for odd k at stride 1


class PatchDiscriminator(nn.Module):
    """images (B, C, H, W) in [0, 1] -> patch logits (B, 1, p, p); real > 0 > fake under the hinge loss."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = cfg
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        h = cfg.hidden_channels
        self.stem = nn.Sequential(_conv(cfg.num_channels, h, 5), act())
        chans = [h] + [h * 2**i for i in range(cfg.num_stages)]
        self.stages = nn.ModuleList(
            nn.Sequential(
                _conv(chans[i], chans[i + 1], 3),
                BlurDownsample(cfg.blur_kernel_size) if cfg.blur_kernel_size else nn.AvgPool2d(2),
                nn.GroupNorm(cfg.num_groups, chans[i + 1]),
                act(),
            )
            for i in range(cfg.num_stages)
        )
        self.pool = nn.AdaptiveMaxPool2d(cfg.pool_size)
        self.head = nn.Sequential(_conv(chans[-1], chans[-1], 1), act(), _conv(chans[-1], 1, 5))

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.pool(x))
