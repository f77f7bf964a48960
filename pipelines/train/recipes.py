"""Training recipes: the paper's two-stage tokenizer schedules for S-128 / B-64 / L-32, its generator
recipe per size (`GeneratorRecipe`, at the end of this file), and a `debug` one of each.

A recipe is a frozen dataclass in code; the training CLI overrides only data, output, workers,
steps and batch size (plus resource flags that do not change the maths). A new experiment is a
new recipe here. Values are the official ones, bytedance/1d-tokenizer:

  stage 1: configs/training/stage1/titok_{s128,l32}.yaml, configs/training/TiTok/stage1/titok_b64.yaml
  stage 2: configs/training/stage2/titok_s128.yaml, configs/training/TiTok/stage2/titok_{b64,l32}.yaml
  optimizer param groups, LR schedulers, EMA: utils/train_utils.py, utils/lr_schedulers.py
  losses, discriminator: modeling/modules/losses.py, discriminator.py, perceptual_loss.py

Batch sizes are global: the official runs use per_gpu_batch_size 32 on 8 GPUs (README_TiTok.md).
The three sizes share one schedule per stage; they differ only in the model preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from titok_core.discriminator import DISCRIMINATOR_PRESETS, DiscriminatorConfig
from titok_core.generator import GENERATOR_PRESETS, AnyGeneratorConfig
from titok_core.losses import PERCEPTUAL_KINDS
from titok_core.presets import PRESETS
from titok_core.sampling import SAMPLING_PRESETS

MIXED_PRECISIONS = ("fp16", "bf16", "fp32")  # autocast dtypes of a training recipe on GPU


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a cosine schedule and linear warm-up (the official `get_cosine_schedule_with_warmup`).

    Args:
        lr: peak learning rate, reached after `warmup_steps`.
        betas: AdamW betas.
        weight_decay: applied to weight matrices only; norms, biases, embeddings and tokens get none.
        eps: AdamW epsilon.
        warmup_steps: linear warm-up from 0.
        end_lr: learning rate at the last step (cosine from lr down to end_lr).
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup_steps: int = 10_000
    end_lr: float = 1e-5
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.lr <= 0 or self.end_lr < 0 or self.end_lr > self.lr:
            raise ValueError(f"learning rates must satisfy 0 <= end_lr ({self.end_lr}) <= lr ({self.lr}), lr > 0")


@dataclass(frozen=True)
class GANConfig:
    """Stage-2 loss: reconstruction + perceptual + hinge GAN, and the discriminator's own optimizer.

    Args:
        reconstruction: "l2" or "l1"; reconstruction_weight its weight.
        perceptual: "lpips" (LPIPS-VGG), "convnext_s" (the official recipe: ConvNeXt-S logits MSE)
            or "lpips+convnext_s" (their mean); perceptual_weight its weight.
        perceptual_resize: compare LPIPS at this side (None: full resolution).
        discriminator_start: first step at which the discriminator trains and the GAN term counts.
        discriminator_factor: multiplies both GAN terms once started (the official "disc_factor").
        discriminator_weight: weight of the generator's GAN term (times the adaptive weight if on).
        adaptive_weight: scale the GAN term by VQGAN's grad-norm ratio at the pixel decoder's last
            layer. The official TiTok recipe does not (constant weight 0.01).
        lecam_weight / lecam_ema_decay: LeCam regularisation of the discriminator and its EMA decay.
        discriminator: the discriminator's sizes.
        discriminator_optimizer: its AdamW; its cosine schedule spans the steps after the start.
    """

    reconstruction: str = "l2"
    reconstruction_weight: float = 1.0
    perceptual: str = "convnext_s"
    perceptual_weight: float = 0.1
    perceptual_resize: int | None = None
    discriminator_start: int = 20_000
    discriminator_factor: float = 1.0
    discriminator_weight: float = 0.01
    adaptive_weight: bool = False
    lecam_weight: float = 0.001
    lecam_ema_decay: float = 0.999
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    discriminator_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        if self.perceptual not in PERCEPTUAL_KINDS:
            raise ValueError(f"perceptual {self.perceptual!r}: use one of {PERCEPTUAL_KINDS}")
        if self.reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction {self.reconstruction!r}: use 'l2' or 'l1'")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the maths of one training stage.

    Args:
        name: "<preset>/stage<N>".
        stage: 1 (proxy codes) or 2 (decoder fine-tuning on pixels).
        model: TiTok preset name (titok_core.PRESETS).
        batch_size: global images per optimizer step (all workers x accumulation).
        max_steps: optimizer steps.
        optimizer: the model's optimizer and schedule.
        ema_decay: EMA of the weights (exported and used for image grids); None: no EMA.
        mixed_precision: autocast dtype on GPU ("fp16" with a grad scaler, "bf16", "fp32");
            CPU always runs fp32.
        quantizer_weight: weight of the quantizer loss (stage 1; 0 in stage 2, where it is frozen).
        gan: stage-2 losses; None for stage 1.
        seed: model init, view choice and shuffling.
        log_every: metrics every N steps; image_every: a PNG grid every N steps;
        num_images: images in a grid; checkpoint_every: a Ray Train checkpoint every N steps;
        keep_checkpoints: checkpoints kept (the newest).
        shuffle_buffer: rows in each worker's local shuffle buffer (the dataset's block order is
            shuffled as well, every epoch the same way for a given seed).
    """

    name: str
    stage: int
    model: str
    batch_size: int
    max_steps: int
    optimizer: OptimizerConfig
    ema_decay: float | None = 0.999
    mixed_precision: str = "fp16"
    quantizer_weight: float = 1.0
    gan: GANConfig | None = None
    seed: int = 42
    log_every: int = 50
    image_every: int = 5_000
    num_images: int = 2
    # The official runs save every 50k steps; a Ray Train worker failure restarts from the last
    # checkpoint, so we checkpoint 10x as often (minutes of work lost instead of hours).
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    shuffle_buffer: int = 1_000

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage {self.stage}: use 1 or 2")
        if (self.stage == 2) != (self.gan is not None):
            raise ValueError("a stage-2 recipe needs gan=GANConfig(...); a stage-1 recipe must not have one")
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}; choose one of {sorted(PRESETS)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision {self.mixed_precision!r}: use one of {MIXED_PRECISIONS}")
        for name in ("batch_size", "max_steps", "log_every", "image_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def with_overrides(self, **changes: Any) -> "Recipe":
        """A copy with the fields the CLI may change (max_steps, batch_size)."""
        allowed = {"max_steps", "batch_size"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"recipe fields {sorted(bad)} are not overridable; add a recipe in pipelines/recipes.py")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        d = dict(d)
        d["optimizer"] = OptimizerConfig(**d["optimizer"])
        if d.get("gan") is not None:
            gan = dict(d["gan"])
            gan["discriminator"] = DiscriminatorConfig(**gan["discriminator"])
            gan["discriminator_optimizer"] = OptimizerConfig(**gan["discriminator_optimizer"])
            d["gan"] = GANConfig(**gan)
        return cls(**d)


# ------------------------------------------------------------------------------------------------
# The official schedules (identical for S-128, B-64 and L-32).

_STAGE1_OPT = OptimizerConfig(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4, eps=1e-8,
                              warmup_steps=10_000, end_lr=1e-5, max_grad_norm=1.0)
# Stage 2 uses beta2 = 0.999 and a 5k warm-up; the discriminator has the same AdamW and schedule.
_STAGE2_OPT = OptimizerConfig(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8,
                              warmup_steps=5_000, end_lr=1e-5, max_grad_norm=1.0)
_STAGE2_GAN = GANConfig(
    reconstruction="l2", reconstruction_weight=1.0, perceptual="convnext_s", perceptual_weight=0.1,
    discriminator_start=20_000, discriminator_factor=1.0, discriminator_weight=0.01, adaptive_weight=False,
    lecam_weight=0.001, lecam_ema_decay=0.999, discriminator=DISCRIMINATOR_PRESETS["official"],
    discriminator_optimizer=_STAGE2_OPT,
)


def _paper(model: str, stage: int) -> Recipe:
    if stage == 1:
        return Recipe(name=f"{model}/stage1", stage=1, model=model, batch_size=256, max_steps=1_000_000,
                      optimizer=_STAGE1_OPT, ema_decay=0.999, mixed_precision="fp16", quantizer_weight=1.0)
    return Recipe(name=f"{model}/stage2", stage=2, model=model, batch_size=256, max_steps=500_000,
                  optimizer=_STAGE2_OPT, ema_decay=0.999, mixed_precision="fp16", quantizer_weight=0.0,
                  gan=_STAGE2_GAN)


# The debug recipes: the `debug` model on a 2-core CPU, seconds per run, so tests see every path.
# Stage 1 uses a fast AdamW (lr 4e-3, beta1 0.5, beta2 0.9): with the official betas the debug model
# sits on a ~250-step plateau at the most-frequent-code accuracy before it learns anything; with these
# it passes that point in under 100 steps. Stage 2: LPIPS-VGG at 64 px; the GAN starts at step 4 with
# the adaptive weight on.
_DEBUG_OPT = OptimizerConfig(lr=4e-3, betas=(0.5, 0.9), weight_decay=1e-4, warmup_steps=10, end_lr=2e-3,
                             max_grad_norm=1.0)
_DEBUG_STAGE1 = Recipe(
    name="debug/stage1", stage=1, model="debug", batch_size=8, max_steps=150, optimizer=_DEBUG_OPT,
    ema_decay=0.9, mixed_precision="bf16", log_every=10, image_every=50, num_images=2, checkpoint_every=50,
    keep_checkpoints=2, shuffle_buffer=16,
)
_DEBUG_STAGE2 = Recipe(
    name="debug/stage2", stage=2, model="debug", batch_size=4, max_steps=16,
    optimizer=dataclasses.replace(_DEBUG_OPT, lr=1e-3, warmup_steps=2, end_lr=1e-4),
    ema_decay=0.9, mixed_precision="bf16", quantizer_weight=0.0, log_every=2, image_every=8, num_images=2,
    checkpoint_every=8, keep_checkpoints=2, shuffle_buffer=8,
    gan=GANConfig(perceptual="lpips", perceptual_weight=0.1, perceptual_resize=64, discriminator_start=4,
                  discriminator_weight=0.1, adaptive_weight=True, lecam_weight=0.001,
                  discriminator=DISCRIMINATOR_PRESETS["debug"],
                  discriminator_optimizer=OptimizerConfig(lr=1e-3, betas=(0.9, 0.999), warmup_steps=2, end_lr=1e-4)),
)

# The demo recipes (`make demo`): the `demo` model at 32 px on a 2-core CPU, about a minute per stage,
# long enough that its reconstructions resemble their inputs. Stage 1: AdamW lr 1e-3 with the official
# betas, batch 16 (faster or more aggressive settings collapse every image onto one token sequence).
# Stage 2: pixel L2 only. The perceptual term is off: offline its backbones are random, and at this
# size its network costs three times the rest of the step. The GAN is off too: a few hundred steps are
# too few for a discriminator to help. No EMA: the runs are shorter than an EMA's memory.
_DEMO_OPT = OptimizerConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-4, warmup_steps=10, end_lr=1e-4,
                            max_grad_norm=1.0)
_DEMO_STAGE1 = Recipe(
    name="demo/stage1", stage=1, model="demo", batch_size=16, max_steps=500, optimizer=_DEMO_OPT, ema_decay=None,
    mixed_precision="bf16", log_every=10, image_every=250, num_images=4, checkpoint_every=250, keep_checkpoints=1,
    shuffle_buffer=64,
)
_DEMO_STAGE2 = Recipe(
    name="demo/stage2", stage=2, model="demo", batch_size=16, max_steps=300, optimizer=_DEMO_OPT, ema_decay=None,
    mixed_precision="bf16", quantizer_weight=0.0, log_every=10, image_every=150, num_images=4,
    checkpoint_every=150, keep_checkpoints=1, shuffle_buffer=64,
    gan=GANConfig(perceptual="lpips", perceptual_weight=0.0, discriminator_start=1_000_000,
                  discriminator=DISCRIMINATOR_PRESETS["debug"],
                  discriminator_optimizer=OptimizerConfig(lr=1e-4, warmup_steps=0, end_lr=1e-5)),
)

RECIPES: dict[int, dict[str, Recipe]] = {
    1: {"S-128": _paper("S-128", 1), "B-64": _paper("B-64", 1), "L-32": _paper("L-32", 1), "debug": _DEBUG_STAGE1},
    2: {"S-128": _paper("S-128", 2), "B-64": _paper("B-64", 2), "L-32": _paper("L-32", 2), "debug": _DEBUG_STAGE2},
}
RECIPES[1]["demo"], RECIPES[2]["demo"] = _DEMO_STAGE1, _DEMO_STAGE2


def get_recipe(stage: int, preset: str) -> Recipe:
    if stage not in RECIPES:
        raise ValueError(f"--stage {stage}: use 1 or 2")
    if preset not in RECIPES[stage]:
        raise ValueError(f"--preset {preset!r}: choose one of {sorted(RECIPES[stage])}")
    return RECIPES[stage][preset]


# ------------------------------------------------------------------------------------------------
# Generator recipes (jobs/train_generator.py): a class-conditional MaskGIT generator on the tokens
# jobs/tokenize_dataset.py wrote. Values are the official ones, bytedance/1d-tokenizer:
#
#   configs/training/generator/maskgit.yaml   optimizer, schedule, steps, batch size, EMA, precision
#   modeling/maskgit.py (ImageBert)           label dropout (class_label_dropout 0.1), masking
#   modeling/modules/losses.py (MLMLoss)      label smoothing 0.1, weight 0.1 on unmasked positions
#   utils/train_utils.py                      no weight decay on vectors, norms, biases, embeddings
#
# The official config trains the L-32 generator; B-64 and S-128 (configs/infer/TiTok/titok_*.yaml) share
# its schedule and differ in the model and the sampling settings of their grids.


@dataclass(frozen=True)
class GeneratorRecipe:
    """Everything that decides the maths of generator training.

    Args:
        name: "<preset>/generator".
        model: generator preset name (titok_core.GENERATOR_PRESETS); its codebook size and token
            count must match the token dataset.
        batch_size: global token sequences per optimizer step (all workers x accumulation).
        max_steps: optimizer steps.
        optimizer: AdamW and its cosine schedule with warm-up.
        ema_decay: EMA of the weights (exported, used for the sample grids); None: no EMA.
        mixed_precision: autocast dtype on GPU ("bf16", "fp16" with a grad scaler, "fp32"); CPU runs fp32.
        label_dropout: probability of training a sequence without its class ("no class" token), which
            classifier-free guidance needs; the exported config records it.
        label_smoothing: cross-entropy label smoothing.
        unmasked_weight: loss weight of the positions that were not masked (masked positions: 1).
        sampling: titok_core.SAMPLING_PRESETS entry the sample grids use.
        seed / log_every / image_every / num_images / checkpoint_every / keep_checkpoints /
            shuffle_buffer: as in `Recipe` (a grid shows `num_images` classes).
    """

    name: str
    model: str
    batch_size: int
    max_steps: int
    optimizer: OptimizerConfig
    ema_decay: float | None = 0.999
    mixed_precision: str = "bf16"
    label_dropout: float = 0.1
    label_smoothing: float = 0.1
    unmasked_weight: float = 0.1
    sampling: str = "L-32"
    seed: int = 42
    log_every: int = 50
    image_every: int = 5_000
    num_images: int = 8
    # As for the tokenizer: checkpoints every 5k steps, so a worker failure costs minutes.
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    shuffle_buffer: int = 10_000

    def __post_init__(self) -> None:
        if self.model not in GENERATOR_PRESETS:
            raise ValueError(f"unknown generator preset {self.model!r}; choose one of {sorted(GENERATOR_PRESETS)}")
        if self.sampling not in SAMPLING_PRESETS:
            raise ValueError(f"unknown sampling preset {self.sampling!r}; choose one of {sorted(SAMPLING_PRESETS)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision {self.mixed_precision!r}: use one of {MIXED_PRECISIONS}")
        for name in ("label_dropout", "label_smoothing", "unmasked_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1]")
        for name in ("batch_size", "max_steps", "log_every", "image_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def generator_config(self) -> AnyGeneratorConfig:
        """The model this recipe trains: its preset with the recipe's label dropout."""
        return dataclasses.replace(GENERATOR_PRESETS[self.model], label_dropout=self.label_dropout)

    def with_overrides(self, **changes: Any) -> "GeneratorRecipe":
        """A copy with the fields the CLI may change (max_steps, batch_size)."""
        bad = set(changes) - {"max_steps", "batch_size"}
        if bad:
            raise ValueError(f"recipe fields {sorted(bad)} are not overridable; add a recipe in pipelines/train/recipes.py")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorRecipe":
        return cls(**{**d, "optimizer": OptimizerConfig(**d["optimizer"])})


_GENERATOR_OPT = OptimizerConfig(lr=2e-4, betas=(0.9, 0.96), weight_decay=0.03, eps=1e-8, warmup_steps=10_000,
                                 end_lr=1e-5, max_grad_norm=1.0)


def _paper_generator(model: str) -> GeneratorRecipe:
    return GeneratorRecipe(name=f"{model}/generator", model=model, batch_size=2048, max_steps=500_000,
                           optimizer=_GENERATOR_OPT, ema_decay=0.999, mixed_precision="bf16", label_dropout=0.1,
                           label_smoothing=0.1, unmasked_weight=0.1, sampling=model)


# The debug recipe: the `debug` generator (width 64, 2 layers) on a 2-core CPU, seconds per run. Its
# lr is 15x the official one: at 2e-4 the tiny model's loss falls by only 0.5 in 40 steps, at 3e-3
# by 4 (same betas, measured on the debug tokenizer's tokens). Grids use the L-32 sampling settings
# (the debug tokenizer has 32 tokens too).
_DEBUG_GENERATOR = GeneratorRecipe(
    name="debug/generator", model="debug", batch_size=8, max_steps=60,
    optimizer=dataclasses.replace(_GENERATOR_OPT, lr=3e-3, warmup_steps=5, end_lr=3e-4),
    ema_decay=0.9, mixed_precision="bf16", sampling="L-32", log_every=5, image_every=20, num_images=2,
    checkpoint_every=20, keep_checkpoints=2, shuffle_buffer=16,
)

GENERATOR_RECIPES: dict[str, GeneratorRecipe] = {
    "L-32": _paper_generator("L-32"), "B-64": _paper_generator("B-64"), "S-128": _paper_generator("S-128"),
    "debug": _DEBUG_GENERATOR,
}


def get_generator_recipe(preset: str) -> GeneratorRecipe:
    if preset not in GENERATOR_RECIPES:
        raise ValueError(f"--preset {preset!r}: choose one of {sorted(GENERATOR_RECIPES)}")
    return GENERATOR_RECIPES[preset]
