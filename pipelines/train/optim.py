"""Optimisation pieces every training task uses: AdamW with the official no-decay rule, the cosine
schedule with warm-up, mixed precision, DDP wrapping, and `ScheduledOptimizer` (one model's
optimizer + schedule + optional fp16 grad scaler, stepped with clipping)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from titok_core.ema import EMA

from .recipes import OptimizerConfig


def _no_decay(name: str, p: Tensor) -> bool:
    # The official exclusion rule (utils/train_utils.py create_optimizer): vectors, norms, biases,
    # embeddings and learned tokens get no weight decay. "embed" also matches patch_embed and
    # decoder_embed, as it does there.
    keys = ("ln", "bias", "latent_tokens", "mask_token", "embedding", "norm", "gamma", "embed")
    return p.ndim < 2 or any(k in name for k in keys)


def make_adamw(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, two groups: with and without weight decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if _no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not _no_decay(n, p)], "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int):
    """Linear warm-up to cfg.lr, then a half cosine down to cfg.end_lr at `total_steps`."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return step / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return (cfg.end_lr + (cfg.lr - cfg.end_lr) * cosine) / cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, precision: str):
    """Mixed precision on GPU only; CPU runs fp32 (bf16 there needs AMX and channels-last to pay off)."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the trainable parameters when more than one worker runs."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(module: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


class ScheduledOptimizer:
    """One model's AdamW + cosine schedule + optional fp16 grad scaler, stepped with clipping."""

    def __init__(self, model: nn.Module, cfg: OptimizerConfig, total_steps: int, fp16: bool):
        self.model, self.cfg = model, cfg
        self.opt = make_adamw(model, cfg)
        self.sched = cosine_with_warmup(self.opt, cfg, total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> Tensor:
        """Unscale, clip (returns the pre-clip global grad norm), step, schedule, zero."""
        self.scaler.unscale_(self.opt)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        limit = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm.detach()

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.opt.load_state_dict(sd["opt"])
        self.sched.load_state_dict(sd["sched"])
        self.scaler.load_state_dict(sd["scaler"])


class TrainedModel:
    """What every training task keeps of the model it trains: the model, its DDP wrapper, the scheduled
    optimizer and, when the recipe keeps one, the EMA copy. The exported model and the checkpointed
    state follow from them (a task with more to save extends `state_dict` / `load_state_dict`)."""

    model: nn.Module
    ddp: nn.Module
    optim: ScheduledOptimizer
    ema: EMA | None

    def setup_training(self, model: nn.Module, device: torch.device, cfg: OptimizerConfig, total_steps: int,
                       mixed_precision: str, ema_decay: float | None) -> None:
        self.model = model
        self.ddp = wrap_ddp(model, device)
        self.optim = ScheduledOptimizer(model, cfg, total_steps, device.type == "cuda" and mixed_precision == "fp16")
        self.ema = EMA(model, ema_decay) if ema_decay else None

    def optimizer_step(self) -> Tensor:
        """Step the optimizer (returns the pre-clip grad norm), then the EMA."""
        norm = self.optim.step().float()
        if self.ema is not None:
            self.ema.update(self.model)
        return norm

    def export_model(self) -> nn.Module:
        """The model to save at the end (the EMA weights when the recipe keeps an EMA)."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optim.load_state_dict(sd["optim"])
        if self.ema is not None:
            self.ema.load_state_dict(sd["ema"])
