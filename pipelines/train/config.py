"""One training run, resolved: the config the driver checks and every worker receives, and the names
of what a run writes.

Output layout (`--output`, local or s3://):
    train_config.json   the resolved job config (recipe, data, workers, ...)
    checkpoints/        Ray Train run: step_XXXXXXXX/ (state.pt, rng_rank*.pt, train_config.json)
    metrics.jsonl, metrics.csv, tensorboard/, images/, attempts.jsonl   (pipelines/train/outputs.py)
    model/              the exported model (titok_core.load_model loads it)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .data import DatasetInfo
from .recipes import Recipe

CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
FAIL_AT_STEP_ENV = "TITOK_TRAIN_FAIL_AT_STEP"  # fault injection for tests: SIGKILL the last worker once


class ConfigError(ValueError):
    """A bad training configuration, found before any worker starts: one line naming the fix."""


@dataclass(frozen=True)
class TrainJobConfig:
    """One training run, resolved: what the workers receive and what train_config.json records.

    Args:
        recipe: the stage's recipe with the CLI's overrides applied.
        data: the proxy dataset as given; dataset: its files, rows and metadata.
        output: run directory (local path or URL).
        teacher: MaskGIT-VQGAN weights URI (stage 1: decodes grids; stage 2: initialises the pixel decoder).
        init: stage-1 model (our directory or an official .bin); required for stage 2.
        num_workers / use_gpu / cpus_per_worker: Ray Train workers and the resources of each.
        grad_accum: micro-batches per optimizer step (the global batch stays recipe.batch_size).
        max_failures: worker-group restarts from the last checkpoint before the run fails.
        lpips_weights / convnext_weights: local perceptual-backbone weights (stage 2).
        random_backbones: randomly initialised perceptual backbones (tests / smoke runs only).
        storage_options: fsspec options for remote data / output (custom S3 endpoint).
    """

    recipe: Recipe
    data: str
    output: str
    dataset: DatasetInfo
    teacher: str
    init: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    grad_accum: int = 1
    max_failures: int = 3
    lpips_weights: str | None = None
    convnext_weights: str | None = None
    random_backbones: bool = False
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        r = self.recipe
        if self.num_workers < 1 or self.grad_accum < 1:
            raise ConfigError("--num-workers and --grad-accum must be >= 1")
        if r.batch_size % (self.num_workers * self.grad_accum):
            n = self.num_workers * self.grad_accum
            raise ConfigError(f"--batch-size {r.batch_size} is not divisible by --num-workers {self.num_workers} "
                              f"x --grad-accum {self.grad_accum}; pick a multiple of {n}")
        if r.stage == 2 and not self.init:
            raise ConfigError("--stage 2 fine-tunes a stage-1 model: pass --init <stage-1 output>/model")
        if self.dataset.rows < r.batch_size // self.grad_accum:
            raise ConfigError(f"--data {self.data} has {self.dataset.rows} rows, fewer than one step's "
                              f"{r.batch_size // self.grad_accum} images; lower --batch-size or add data")

    @property
    def micro_batch(self) -> int:
        """Images per worker per forward pass."""
        return self.recipe.batch_size // (self.num_workers * self.grad_accum)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["recipe"] = self.recipe.to_dict()
        d["dataset"] = self.dataset.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJobConfig:
        d = dict(d)
        d["recipe"] = Recipe.from_dict(d["recipe"])
        d["dataset"] = DatasetInfo.from_dict(d["dataset"])
        return cls(**d)
