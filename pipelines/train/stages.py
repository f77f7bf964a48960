"""The two TiTok training stages as tasks the Ray Train loop (loop.py) drives (`TrainTask`).

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

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from titok_core import PRESETS, MaskGITVQGAN, ProxyPixelDecoder, TiTok, TiTokReleased
from titok_core.discriminator import PatchDiscriminator
from titok_core.losses import (
    LeCamEMA,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    proxy_code_accuracy,
    proxy_code_loss,
    reconstruction_loss,
)
from titok_core.metrics import codebook_stats, psnr

from ..preprocess import to_model_input, to_uint8
from ..runtime import load_model_uri, perceptual_loss
from ..schema import DatasetMetadata
from .data import ViewSampler
from .optim import ScheduledOptimizer, TrainedModel, autocast, no_sync, wrap_ddp
from .recipes import Recipe

BatchSampler = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]


class TrainTask(Protocol):
    """What the shared loop (loop.py) needs from a training task."""

    metrics: list[str]  # the per-step metric names, in the order the CSV shows them

    def batch_sampler(self, metadata: DatasetMetadata) -> BatchSampler:
        """The task's batch source: (raw dataset batch, epoch) -> the batch `train_step` takes
        (run by `data.iterate_batches` in its decode threads)."""

    def train_step(self, batches: list[dict[str, np.ndarray]], step: int) -> dict[str, Tensor]:
        """One optimizer step over micro-batches (gradient accumulation); per-step metric tensors."""

    def log_metrics(self) -> dict[str, float]:
        """Metrics known only at a log step (learning rates, window statistics), reduced over workers."""

    def grid(self, batch: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(inputs, outputs) uint8 NHWC for an image grid; None: this run draws no grids."""

    def export_model(self) -> nn.Module:
        """The model to save at the end (the EMA weights when the recipe keeps an EMA)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


def load_teacher(uri: str, device: torch.device) -> MaskGITVQGAN:
    teacher = load_model_uri(uri, option="--teacher", what="teacher weights", kinds=(MaskGITVQGAN,)).model
    return teacher.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# Stage 1


class Stage1Task(TrainedModel):
    """TiTok on proxy codes. `metrics` are per-step scalars averaged over a log window and workers."""

    metrics = ["loss", "ce_loss", "quantizer_loss", "accuracy", "codebook_usage", "codebook_perplexity",
               "lr", "grad_norm", "images_per_s"]
    with_codes = True

    def __init__(self, recipe: Recipe, device: torch.device, teacher_uri: str):
        self.recipe, self.device, self.teacher_uri = recipe, device, teacher_uri
        cfg = PRESETS[recipe.model]
        torch.manual_seed(recipe.seed)  # identical init on every worker (DDP also broadcasts rank 0's)
        self.setup_training(TiTok(cfg).to(device).train(), device, recipe.optimizer, recipe.max_steps,
                            recipe.mixed_precision, recipe.ema_decay)
        self.code_counts = torch.zeros(cfg.codebook_size, dtype=torch.float64, device=device)
        self._teacher: MaskGITVQGAN | None = None

    def batch_sampler(self, metadata: DatasetMetadata) -> ViewSampler:
        """A stored view's crop and its teacher codes."""
        return ViewSampler(self.recipe.seed, metadata.crop_size, with_codes=self.with_codes,
                           codebook_size=metadata.proxy_codebook_size)

    def train_step(self, batches: list[dict[str, np.ndarray]], step: int) -> dict[str, Tensor]:
        sums: dict[str, Tensor] = {}
        for i, batch in enumerate(batches):
            images = to_model_input(batch["images"], self.device)
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
        sums["grad_norm"] = self.optimizer_step()
        return sums

    def log_metrics(self) -> dict[str, float]:
        """The learning rate, and codebook usage / perplexity of the tokens since the last log step."""
        counts = self.code_counts.clone()
        if dist.is_initialized():
            dist.all_reduce(counts)
        self.code_counts.zero_()
        usage, perplexity = codebook_stats(counts)
        return {"codebook_usage": usage, "codebook_perplexity": perplexity, "lr": self.optim.lr}

    @torch.no_grad()
    def grid(self, batch: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and the teacher's decoding of the (EMA) model's argmax proxy codes."""
        if self._teacher is None:
            self._teacher = load_teacher(self.teacher_uri, self.device)
        model = self.export_model()
        images = to_model_input(batch["images"][:n], self.device)
        logits, _ = model(images)
        codes = logits.argmax(1).flatten(1)
        return batch["images"][:n], to_uint8(self._teacher.decode(codes))


# ------------------------------------------------------------------------------------------------
# Stage 2


class Stage2Task(TrainedModel):
    """Decoder fine-tuning on pixels with a GAN; the encoder side stays bit-equal to the stage-1 model."""

    metrics = ["loss", "l2_loss", "perceptual_loss", "gan_loss", "gan_weight", "psnr", "d_loss", "d_lecam",
               "logits_real", "logits_fake", "lr", "d_lr", "grad_norm", "d_grad_norm", "images_per_s"]
    with_codes = False

    def __init__(self, recipe: Recipe, device: torch.device, teacher_uri: str, init: str | None = None,
                 lpips_weights: str | None = None, convnext_weights: str | None = None,
                 pretrained_backbones: bool = True):
        assert recipe.gan is not None and init is not None
        self.recipe, self.gan, self.device = recipe, recipe.gan, device
        start = load_model_uri(init, option="--init", what="stage-1 checkpoint", kinds=(TiTok, TiTokReleased)).model
        if isinstance(start, TiTokReleased):
            model = start
        else:
            pixel = ProxyPixelDecoder.from_teacher(load_teacher(teacher_uri, torch.device("cpu")))
            model = TiTokReleased(start.config, titok=start, pixel=pixel)
        model = model.to(device).train()
        for part in (model.titok.encoder, model.titok.quantize):
            part.requires_grad_(False).eval()
        self.setup_training(model, device, recipe.optimizer, recipe.max_steps, recipe.mixed_precision,
                            recipe.ema_decay)
        fp16 = device.type == "cuda" and recipe.mixed_precision == "fp16"

        torch.manual_seed(recipe.seed + 1)
        self.disc = PatchDiscriminator(self.gan.discriminator).to(device).train()
        self.ddp_disc = wrap_ddp(self.disc, device)
        d_steps = max(1, recipe.max_steps - self.gan.discriminator_start)
        self.d_optim = ScheduledOptimizer(self.disc, self.gan.discriminator_optimizer, d_steps, fp16)
        self.lecam = LeCamEMA(self.gan.lecam_ema_decay).to(device)
        self.perceptual = perceptual_loss(self.gan.perceptual, pretrained_backbones, lpips_weights,
                                          convnext_weights, self.gan.perceptual_resize).to(device)

    def batch_sampler(self, metadata: DatasetMetadata) -> ViewSampler:
        """A stored view's crop (no codes: stage 2 trains on pixels)."""
        return ViewSampler(self.recipe.seed, metadata.crop_size, with_codes=self.with_codes)

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
            images = to_model_input(batch["images"], self.device)
            with no_sync(self.ddp, i == n - 1):
                with autocast(self.device, self.recipe.mixed_precision):
                    recon, _ = self.ddp(images)
                recon = recon.float()  # the losses run in float32, as the official loss module does
                l2 = g.reconstruction_weight * reconstruction_loss(images, recon, g.reconstruction)
                # a zero weight skips the perceptual network's forward (its cost dominates a small model's step)
                perceptual = (self.perceptual(images, recon) if g.perceptual_weight > 0
                              else torch.zeros((), device=self.device))
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
        add("grad_norm", self.optimizer_step())

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

    def log_metrics(self) -> dict[str, float]:
        return {"lr": self.optim.lr, "d_lr": self.d_optim.lr}

    @torch.no_grad()
    def grid(self, batch: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and the (EMA) model's reconstructions."""
        images = to_model_input(batch["images"][:n], self.device)
        recon, _ = self.export_model()(images)
        return batch["images"][:n], to_uint8(recon)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "disc": self.disc.state_dict(), "d_optim": self.d_optim.state_dict(),
                "lecam": self.lecam.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        self.disc.load_state_dict(sd["disc"])
        self.d_optim.load_state_dict(sd["d_optim"])
        self.lecam.load_state_dict(sd["lecam"])
