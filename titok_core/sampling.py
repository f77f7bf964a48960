"""MaskGIT sampling with a masked-token generator: class labels -> N token ids per image.

The official loop (1d-tokenizer `ImageBert.generate`, after MUSE), step by step, including its
random-number calls, so that under the same seed it draws exactly what the official code draws:
start from all [MASK]; at step s (ratio r = (s+1)/S) predict every position, sample the masked
ones with Gumbel noise scaled by `randomize_temperature * (1 - r)`, then re-mask the
floor(N * arccos(r) / (pi/2)) least confident (confidence = sampled logit + the same kind of noise).
Classifier-free guidance mixes a conditional and an unconditional ("no class") prediction.

Legend: b batch, n positions (N), k codebook (K), s steps (S).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .generator import MaskedTokenGenerator

GuidanceDecay = Literal["constant", "linear", "power-cosine"]


@dataclass(frozen=True)
class SamplingConfig:
    """How `generate` samples. Field names and defaults are the official `generate` keywords.

    Args:
        num_sample_steps: S, forward passes (x2 with guidance) per image.
        guidance_scale: g, classifier-free guidance strength (0: no unconditional pass).
        guidance_decay: "constant" (g at every step), "linear" (0 at the first step, then
            g * s / S), "power-cosine" (1 + (g - 1) * (1 - cos(pi * (s / S) ** pow)) / 2).
        guidance_scale_pow: pow of the power-cosine schedule.
        randomize_temperature: Gumbel-noise temperature at the start, annealed as t * (1 - r).
        softmax_temperature_annealing: divide the logits by 0.5 + 0.8 * (1 - r) before sampling.
    """

    num_sample_steps: int = 8
    guidance_scale: float = 3.0
    guidance_decay: GuidanceDecay = "constant"
    guidance_scale_pow: float = 3.0
    randomize_temperature: float = 4.5
    softmax_temperature_annealing: bool = False

    def __post_init__(self) -> None:
        if self.guidance_decay not in ("constant", "linear", "power-cosine"):
            raise ValueError(
                f"unknown guidance_decay {self.guidance_decay!r}; use 'constant', 'linear' or 'power-cosine'")
        if self.num_sample_steps < 1:
            raise ValueError(f"num_sample_steps must be >= 1, got {self.num_sample_steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The paper's settings (Table 4 / the official configs/infer/TiTok/titok_{l32,b64,s128}.yaml:
# num_steps, guidance_scale, guidance_decay, randomize_temperature). Softmax-temperature annealing
# is on because the official evaluation script sample_imagenet_titok.py passes
# softmax_temperature_annealing=True; guidance_scale_pow is demo_util.sample_fn's default 3.0,
# which that script does not override.
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "L-32": SamplingConfig(8, 4.5, "linear", 3.0, 9.5, True),
    "B-64": SamplingConfig(8, 3.0, "linear", 3.0, 11.0, True),
    "S-128": SamplingConfig(64, 6.9, "power-cosine", 3.0, 2.8, True),
}


def get_sampling_preset(name: str) -> SamplingConfig:
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"unknown sampling preset {name!r}; choose one of {sorted(SAMPLING_PRESETS)}")
    return SAMPLING_PRESETS[name]


def _gumbel_like(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gumbel(0, 1) noise of t's shape, drawn as the official code draws it (one uniform per
    entry, -log(-log(u)) with both logs clamped at 1e-20)."""
    u = torch.empty(t.shape, dtype=t.dtype, device=t.device).uniform_(0, 1, generator=generator)
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def _power_cosine_scale(step: int, num_steps: int, guidance_scale: float, power: float) -> float:
    # Evaluated in float32 as the official code does (its exponent is a float32 tensor); on the
    # CPU, so no device synchronisation.
    pow32 = torch.ones(1) * power
    scale_step = (1 - torch.cos(((step / num_steps) ** pow32) * torch.pi)) * 1 / 2
    return float((guidance_scale - 1) * scale_step + 1)


def generate(
    model: MaskedTokenGenerator,
    condition: Tensor,
    config: SamplingConfig = SamplingConfig(),
    *,
    generator: torch.Generator | None = None,
    return_step_inputs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sample token ids for class labels.

    Args:
        model: a generator (BertGenerator / UViTGenerator); run in eval mode here, its mode is restored.
        condition: (B,) int class labels in [0, C), on the model's device.
        config: the sampling settings; SAMPLING_PRESETS holds the paper's.
        generator: random-number generator for every draw (default: torch's global one, which is
            what reproduces the official code under `torch.manual_seed`).
        return_step_inputs: also return the ids fed to the network at the start of each step.

    Returns:
        ids (B, N) int64 in [0, K); with return_step_inputs also (S, B, N) int64 (row 0 all [MASK]).
    """
    cfg = model.config
    if condition.dim() != 1 or condition.dtype.is_floating_point:
        raise ValueError(f"condition must be (B,) integer class labels, got {condition.dtype} {tuple(condition.shape)}")
    if condition.numel() == 0:  # e.g. the empty tail of a sharded label list
        ids = torch.empty(0, cfg.num_latent_tokens, dtype=torch.long, device=condition.device)
        return (ids, ids.new_empty(config.num_sample_steps, 0, cfg.num_latent_tokens)) if return_step_inputs else ids
    lo, hi = int(condition.min()), int(condition.max())
    if lo < 0 or hi >= cfg.num_classes:
        raise ValueError(f"class labels must be in [0, {cfg.num_classes}); got labels from {lo} to {hi}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = _generate(model, condition.long(), config, generator, return_step_inputs)
    finally:
        model.train(was_training)
    # Inference tensors cannot enter autograd (e.g. a decoder with trainable weights): hand back
    # ordinary ones (a copy of B x N ids).
    return tuple(t.clone() for t in out) if return_step_inputs else out.clone()


def _generate(model: MaskedTokenGenerator, condition: Tensor, sc: SamplingConfig,
              generator: torch.Generator | None, return_step_inputs: bool) -> Tensor | tuple[Tensor, Tensor]:
    cfg, device, steps = model.config, condition.device, sc.num_sample_steps
    b, n, mask_id = condition.shape[0], cfg.num_latent_tokens, cfg.mask_token_id
    ids = torch.full((b, n), mask_id, dtype=torch.long, device=device)
    step_inputs = []
    cfg_scale = sc.guidance_scale if sc.guidance_decay == "constant" else 0.0
    for step in range(steps):
        ratio = (step + 1) / steps
        annealed_temp = sc.randomize_temperature * (1.0 - ratio)
        is_mask = ids == mask_id
        if return_step_inputs:
            step_inputs.append(ids)
        if sc.guidance_decay == "power-cosine":
            cfg_scale = _power_cosine_scale(step, steps, sc.guidance_scale, sc.guidance_scale_pow)

        if cfg_scale != 0:
            # The official code runs two forward passes (labels kept, labels dropped), each drawing
            # B label-dropout numbers; we draw the same and run one batch of 2B.
            cond_tokens = model.class_tokens(condition, 0.0, generator)
            uncond_tokens = model.class_tokens(condition, 1.0, generator)
            seq = torch.cat([torch.cat([cond_tokens, uncond_tokens])[:, None], ids.repeat(2, 1)], dim=1)
            cond_logits, uncond_logits = model.forward_sequence(seq).float().chunk(2)
            if sc.guidance_decay == "power-cosine":
                # Official behaviour: power-cosine guides as u + g (c - u) ...
                logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
            else:
                # ... while constant and linear guide as c + g (c - u).
                logits = cond_logits + (cond_logits - uncond_logits) * cfg_scale
        else:
            logits = model(ids, condition, cond_drop_prob=0.0, generator=generator).float()  # (b, n, k)

        if sc.softmax_temperature_annealing:
            logits = logits / (0.5 + 0.8 * (1 - ratio))

        # Sample every position (noise is drawn even at temperature 0, as in the official code).
        sampled_ids = (logits + annealed_temp * _gumbel_like(logits, generator)).argmax(dim=-1)
        sampled_logits = logits.gather(-1, sampled_ids[..., None]).squeeze(-1)  # (b, n)
        sampled_ids = torch.where(is_mask, sampled_ids, ids)
        sampled_logits = torch.where(is_mask, sampled_logits, torch.inf)

        # Re-mask the least confident positions, following the arccos schedule.
        scheduled = math.floor(n * math.acos(ratio) / (math.pi * 0.5))
        # Official behaviour: the number re-masked comes from batch row 0 and is used for all rows.
        still_masked = is_mask[0].sum() - 1
        mask_len = still_masked.clamp(max=scheduled).clamp(min=1)  # a 0-d tensor: no device sync
        confidence = sampled_logits + annealed_temp * _gumbel_like(sampled_logits, generator)
        sorted_confidence = confidence.sort(dim=-1).values
        cut_off = sorted_confidence.gather(-1, (mask_len - 1).expand(b, 1))
        if step == steps - 1:
            ids = sampled_ids
        else:
            ids = torch.where(confidence <= cut_off, mask_id, sampled_ids)

        if sc.guidance_decay == "linear":
            # Official behaviour: linear guidance takes effect from step 1 (step 0 had scale 0).
            cfg_scale = ratio * sc.guidance_scale
    if return_step_inputs:
        return ids, torch.stack(step_inputs)
    return ids
