"""The two TiTok training stages as tasks the Ray Train loop (train_loop.py) drives.

A task owns its models, optimizers, schedules, EMA and losses, and knows how to take one optimizer
step over a list of micro-batches (gradient accumulation), what to draw in an image grid, what its
checkpoint holds and which model it exports:

    Stage1Task  TiTok: images -> tokens -> proxy-code logits; CE against the stored teacher codes
                + quantizer_weight * quantizer loss. Grids decode the argmax codes with the teacher.
    Stage2Task  TiTokReleased: frozen encoder / quantizer / latent tokens; the TiTok decoder and
                the pixel decoder (from the teacher) train on pixels with L2 + perceptual + hinge
                GAN (start step, optional adaptive weight, LeCam); the discriminator has its own
                AdamW and schedule.

Legend: B micro-batch, H W crop, g proxy grid side, C tokenizer codebook size.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from titok_core import PRESETS, MaskGITVQGAN, ProxyPixelDecoder, TiTok, TiTokReleased, load_model
from titok_core.discriminator import PatchDiscriminator
from titok_core.ema import EMA
from titok_core.losses import (
    LeCamEMA,
    adaptive_gan_weight,
    build_perceptual_loss,
    hinge_d_loss,
    hinge_g_loss,
    proxy_code_accuracy,
    proxy_code_loss,
    psnr,
    reconstruction_loss,
)

from .recipes import OptimizerConfig, Recipe
from .storage import fetch_to_cache


# ------------------------------------------------------------------------------------------------
# Optimisation pieces shared by both stages


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


def to_images(batch: dict[str, np.ndarray], device: torch.device) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on device."""
    x = torch.from_numpy(batch["images"]).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) float -> (B, H, W, 3) uint8, clamped to [0, 1]."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def load_teacher(uri: str, device: torch.device) -> MaskGITVQGAN:
    teacher = load_model(fetch_to_cache(uri, what="teacher weights", option="--teacher"))
    if not isinstance(teacher, MaskGITVQGAN):
        raise ValueError(f"--teacher {uri} holds a {type(teacher).__name__}, not a MaskGIT-VQGAN")
    return teacher.to(device).eval().requires_grad_(False)


class _Optimised:
    """One model's optimizer + schedule + optional fp16 grad scaler, stepped with clipping."""

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


# ------------------------------------------------------------------------------------------------
# Stage 1


class Stage1Task:
    """TiTok on proxy codes. `metrics` are per-step scalars averaged over a log window and workers."""

    metrics = ["loss", "ce_loss", "quantizer_loss", "accuracy", "codebook_usage", "codebook_perplexity",
               "lr", "grad_norm", "images_per_s"]
    with_codes = True

    def __init__(self, recipe: Recipe, device: torch.device, teacher_uri: str):
        self.recipe, self.device, self.teacher_uri = recipe, device, teacher_uri
        cfg = PRESETS[recipe.model]
        torch.manual_seed(recipe.seed)  # identical init on every worker (DDP also broadcasts rank 0's)
        self.model = TiTok(cfg).to(device).train()
        self.ddp = wrap_ddp(self.model, device)
        fp16 = device.type == "cuda" and recipe.mixed_precision == "fp16"
        self.optim = _Optimised(self.model, recipe.optimizer, recipe.max_steps, fp16)
        self.ema = EMA(self.model, recipe.ema_decay) if recipe.ema_decay else None
        self.code_counts = torch.zeros(cfg.codebook_size, dtype=torch.float64, device=device)
        self._teacher: MaskGITVQGAN | None = None

    def train_step(self, batches: list[dict[str, np.ndarray]], step: int) -> dict[str, Tensor]:
        sums: dict[str, Tensor] = {}
        for i, batch in enumerate(batches):
            images = to_images(batch, self.device)
            codes = torch.from_numpy(batch["codes"]).to(self.device, non_blocking=True)
            with no_sync(self.ddp, i == len(batches) - 1):
                with autocast(self.device, self.recipe.mixed_precision):
                    logits, q = self.ddp(images)
                ce = proxy_code_loss(logits, codes)
                loss = ce + self.recipe.quantizer_weight * q.quantizer_loss
                self.optim.backward(loss / len(batches))
            self.code_counts += torch.bincount(q.codes.flatten(), minlength=self.code_counts.numel()).double()
            for k, v in (("loss", loss), ("ce_loss", ce), ("quantizer_loss", q.quantizer_loss),
                         ("accuracy", proxy_code_accuracy(logits, codes))):
                sums[k] = sums.get(k, 0.0) + v.detach().float() / len(batches)
        sums["grad_norm"] = self.optim.step().float()
        if self.ema is not None:
            self.ema.update(self.model)
        return sums

    def lrs(self) -> dict[str, float]:
        return {"lr": self.optim.lr}

    @torch.no_grad()
    def grid(self, batch: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and the teacher's decoding of the (EMA) model's argmax proxy codes."""
        if self._teacher is None:
            self._teacher = load_teacher(self.teacher_uri, self.device)
        model = self.export_model()
        images = to_images({"images": batch["images"][:n]}, self.device)
        logits, _ = model(images)
        codes = logits.argmax(1).flatten(1)
        return batch["images"][:n], to_uint8(self._teacher.decode(codes))

    def export_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optim.load_state_dict(sd["optim"])
        if self.ema is not None:
            self.ema.load_state_dict(sd["ema"])


# ------------------------------------------------------------------------------------------------
# Stage 2


class Stage2Task:
    """Decoder fine-tuning on pixels with a GAN; the encoder side stays bit-equal to the stage-1 model."""

    metrics = ["loss", "l2_loss", "perceptual_loss", "gan_loss", "gan_weight", "psnr", "d_loss", "d_lecam",
               "logits_real", "logits_fake", "lr", "d_lr", "grad_norm", "d_grad_norm", "images_per_s"]
    with_codes = False

    def __init__(self, recipe: Recipe, device: torch.device, teacher_uri: str, init: str | None = None,
                 lpips_weights: str | None = None, convnext_weights: str | None = None,
                 pretrained_backbones: bool = True):
        assert recipe.gan is not None and init is not None
        self.recipe, self.gan, self.device = recipe, recipe.gan, device
        start = load_model(fetch_to_cache(init, what="stage-1 checkpoint", option="--init"))
        if isinstance(start, TiTokReleased):
            model = start
        else:
            pixel = ProxyPixelDecoder.from_teacher(load_teacher(teacher_uri, torch.device("cpu")))
            model = TiTokReleased(start.config, titok=start, pixel=pixel)
        self.model = model.to(device).train()
        for part in (self.model.titok.encoder, self.model.titok.quantize):
            part.requires_grad_(False).eval()
        self.ddp = wrap_ddp(self.model, device)
        fp16 = device.type == "cuda" and recipe.mixed_precision == "fp16"
        self.optim = _Optimised(self.model, recipe.optimizer, recipe.max_steps, fp16)
        self.ema = EMA(self.model, recipe.ema_decay) if recipe.ema_decay else None

        torch.manual_seed(recipe.seed + 1)
        self.disc = PatchDiscriminator(self.gan.discriminator).to(device).train()
        self.ddp_disc = wrap_ddp(self.disc, device)
        d_steps = max(1, recipe.max_steps - self.gan.discriminator_start)
        self.d_optim = _Optimised(self.disc, self.gan.discriminator_optimizer, d_steps, fp16)
        self.lecam = LeCamEMA(self.gan.lecam_ema_decay).to(device)
        self.perceptual = build_perceptual_loss(self.gan.perceptual, pretrained_backbones, lpips_weights,
                                                convnext_weights, self.gan.perceptual_resize).to(device)

    def _gan_on(self, step: int) -> bool:
        return step >= self.gan.discriminator_start and self.gan.discriminator_factor > 0

    def train_step(self, batches: list[dict[str, np.ndarray]], step: int) -> dict[str, Tensor]:
        g, n = self.gan, len(batches)
        gan_on = self._gan_on(step)
        sums: dict[str, Tensor] = {}

        def add(k: str, v: Tensor | float) -> None:
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, device=self.device).detach().float() / n

        pairs = []
        for i, batch in enumerate(batches):
            images = to_images(batch, self.device)
            with no_sync(self.ddp, i == n - 1):
                with autocast(self.device, self.recipe.mixed_precision):
                    recon, _ = self.ddp(images)
                recon = recon.float()  # the losses run in float32, as the official loss module does
                l2 = g.reconstruction_weight * reconstruction_loss(images, recon, g.reconstruction)
                perceptual = self.perceptual(images, recon)
                loss = l2 + g.perceptual_weight * perceptual
                gan_loss, weight = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
                if gan_on and g.discriminator_weight > 0:
                    self.disc.requires_grad_(False)  # the generator's GAN term must not train D
                    gan_loss = hinge_g_loss(self.disc(recon))
                    self.disc.requires_grad_(True)
                    weight = torch.tensor(g.discriminator_weight, device=self.device)
                    if g.adaptive_weight:
                        weight = weight * adaptive_gan_weight(loss, gan_loss, self.model.pixel.decoder.conv_out.weight)
                    loss = loss + weight * g.discriminator_factor * gan_loss
                self.optim.backward(loss / n)
            pairs.append((images, recon.detach()))
            for k, v in (("loss", loss), ("l2_loss", l2), ("perceptual_loss", perceptual), ("gan_loss", gan_loss),
                         ("gan_weight", weight), ("psnr", psnr(images, recon))):
                add(k, v)
        add("grad_norm", self.optim.step())
        if self.ema is not None:
            self.ema.update(self.model)

        if gan_on:
            for i, (images, recon) in enumerate(pairs):
                with no_sync(self.ddp_disc, i == n - 1):
                    # real and fake in one forward: DDP expects one forward per backward (GroupNorm is per sample)
                    logits = self.ddp_disc(torch.cat([images, recon])).float()
                    real, fake = logits.chunk(2)
                    lecam = self.lecam.loss(real, fake) if g.lecam_weight > 0 else torch.zeros((), device=self.device)
                    d_loss = g.discriminator_factor * hinge_d_loss(real, fake) + g.lecam_weight * lecam
                    self.d_optim.backward(d_loss / n)
                for k, v in (("d_loss", d_loss), ("d_lecam", lecam), ("logits_real", real.mean()),
                             ("logits_fake", fake.mean())):
                    add(k, v)
            add("d_grad_norm", self.d_optim.step())
        return sums

    def lrs(self) -> dict[str, float]:
        return {"lr": self.optim.lr, "d_lr": self.d_optim.lr}

    @torch.no_grad()
    def grid(self, batch: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and the (EMA) model's reconstructions."""
        images = to_images({"images": batch["images"][:n]}, self.device)
        recon, _ = self.export_model()(images)
        return batch["images"][:n], to_uint8(recon)

    def export_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "disc": self.disc.state_dict(), "d_optim": self.d_optim.state_dict(), "lecam": self.lecam.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.optim.load_state_dict(sd["optim"])
        if self.ema is not None:
            self.ema.load_state_dict(sd["ema"])
        self.disc.load_state_dict(sd["disc"])
        self.d_optim.load_state_dict(sd["d_optim"])
        self.lecam.load_state_dict(sd["lecam"])
