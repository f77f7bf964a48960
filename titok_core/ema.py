"""Exponential moving average of a model's weights (what the exported model carries).

The official recipe's EMA (1d-tokenizer `modeling/modules/ema_model.py`, decay 0.999, no
`use_ema_warmup`): at update n the decay is min(decay, (1 + s) / (10 + s)) with s = n - 1, and 0 for
the first update, so early averages are not dominated by the random initialisation. Parameters
that do not train (frozen in stage 2) are copied, so they stay bit-equal to the model's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A frozen copy of `model` whose floating-point weights follow it as an EMA.

    Args:
        model: the model to follow (not a DDP wrapper: pass `.module`).
        decay: the largest decay used.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay {decay} must be in [0, 1)")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, update: int) -> float:
        """Decay applied at the `update`-th update (1-based)."""
        s = update - 1
        return 0.0 if s <= 0 else min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        for avg, p in zip(self.module.parameters(), model.parameters(), strict=True):
            if d == 0.0 or not p.requires_grad:
                avg.copy_(p)
            else:
                avg.lerp_(p, 1.0 - d)
        for avg, b in zip(self.module.buffers(), model.buffers(), strict=True):
            avg.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
