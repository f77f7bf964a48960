"""One training run, resolved: the config the driver checks and every worker receives (`TrainJobConfig`
for the tokenizer stages, `GeneratorJobConfig` for the generator), and the names of what a run writes.

Output layout (`--output`, local or s3://):
    train_config.json   the resolved job config (recipe, data, workers, ...)
    checkpoints/        Ray Train run: step_XXXXXXXX/ (state.pt, rng_rank*.pt, train_config.json)
    metrics.jsonl, metrics.csv, tensorboard/, images/, attempts.jsonl   (pipelines/train/outputs.py)
    model/              the exported model (titok_core.load_model loads it)
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from ..runtime import non_negative_int, positive_float, positive_int
from ..storage import endpoint_options
from .data import DatasetInfo
from .recipes import GeneratorRecipe, Recipe
from .token_data import TokenDatasetInfo

CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
FAIL_AT_STEP_ENV = "TITOK_TRAIN_FAIL_AT_STEP"  # fault injection for tests: SIGKILL the last worker once


class ConfigError(ValueError):
    """A bad training configuration, found before any worker starts: one line naming the fix."""


def _check_batches(batch_size: int, num_workers: int, grad_accum: int, rows: int, data: str) -> None:
    if num_workers < 1 or grad_accum < 1:
        raise ConfigError("--num-workers and --grad-accum must be >= 1")
    if batch_size % (num_workers * grad_accum):
        n = num_workers * grad_accum
        raise ConfigError(f"--batch-size {batch_size} is not divisible by --num-workers {num_workers} "
                          f"x --grad-accum {grad_accum}; pick a multiple of {n}")
    if rows < batch_size // grad_accum:
        raise ConfigError(f"--data {data} has {rows} rows, fewer than one step's "
                          f"{batch_size // grad_accum} images; lower --batch-size or add data")


def add_resource_arguments(p: argparse.ArgumentParser, mixed_precision: str = "mixed precision") -> argparse._ArgumentGroup:
    """The options every training job has that do not change the maths: workers, devices, CPUs per
    worker, gradient accumulation, restarts, storage endpoint and Ray address. Returns the group (a job
    adds its own resource options to it)."""
    g = p.add_argument_group("resources (do not change the maths)")
    g.add_argument("--num-workers", type=positive_int, default=1, help="Ray Train workers (one GPU each with --use-gpu)")
    g.add_argument("--use-gpu", action="store_true", help=f"one GPU per worker, NCCL, {mixed_precision}")
    g.add_argument("--cpus-per-worker", type=positive_float, default=None,
                   help="CPUs reserved per worker (default: 0.5 on CPU, which leaves Ray Data a CPU on a 2-core "
                        "machine; 4 with --use-gpu)")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per step (same global batch)")
    g.add_argument("--max-failures", type=non_negative_int, default=3,
                   help="restarts from the last checkpoint before giving up")
    g.add_argument("--endpoint-url", default=None, help="custom S3 endpoint for --data / --output")
    g.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    return g


def resources(args: argparse.Namespace) -> dict[str, Any]:
    """The job config's resource fields from the options `add_resource_arguments` added."""
    return {"num_workers": args.num_workers, "use_gpu": args.use_gpu,
            "cpus_per_worker": args.cpus_per_worker or (4.0 if args.use_gpu else 0.5), "grad_accum": args.grad_accum,
            "max_failures": args.max_failures, "storage_options": endpoint_options(args.endpoint_url)}


class _RunConfig:
    """What both job configs share: the micro-batch, and their train_config.json form."""

    recipe_type: ClassVar[type]
    dataset_type: ClassVar[type]

    @property
    def micro_batch(self) -> int:
        """Samples per worker per forward pass."""
        return self.recipe.batch_size // (self.num_workers * self.grad_accum)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["recipe"] = self.recipe.to_dict()
        d["dataset"] = self.dataset.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = dict(d)
        d["recipe"] = cls.recipe_type.from_dict(d["recipe"])
        d["dataset"] = cls.dataset_type.from_dict(d["dataset"])
        return cls(**d)


@dataclass(frozen=True)
class TrainJobConfig(_RunConfig):
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

    kind: ClassVar[str] = "tokenizer"
    recipe_type: ClassVar[type] = Recipe
    dataset_type: ClassVar[type] = DatasetInfo

    def __post_init__(self) -> None:
        r = self.recipe
        _check_batches(r.batch_size, self.num_workers, self.grad_accum, self.dataset.rows, self.data)
        if r.stage == 2 and not self.init:
            raise ConfigError("--stage 2 fine-tunes a stage-1 model: pass --init <stage-1 output>/model")

    def training_record(self) -> dict[str, Any]:
        """What the exported model records about the run that made it (besides its step)."""
        r = self.recipe
        return {"stage": r.stage, "recipe": r.name, "ema": r.ema_decay is not None, "data": self.data,
                "init": self.init, "teacher_sha256": self.dataset.metadata.model.weights_sha256}


@dataclass(frozen=True)
class GeneratorJobConfig(_RunConfig):
    """One generator training run, resolved: what the workers receive and what train_config.json records.

    The resources and the output layout are those of `TrainJobConfig`; the shared loop (loop.py)
    drives both.

    Args:
        recipe: the generator recipe with the CLI's overrides applied.
        data: the token dataset as given; dataset: its files, rows, metadata and value ranges.
        output: run directory (local path or URL).
        tokenizer: the dataset's tokenizer in its released form (checked by weight hash), which decodes
            the sample grids; None: no grids.
        num_workers / use_gpu / cpus_per_worker / grad_accum / max_failures / storage_options: as in
            `TrainJobConfig`.
    """

    kind: ClassVar[str] = "generator"
    recipe_type: ClassVar[type] = GeneratorRecipe
    dataset_type: ClassVar[type] = TokenDatasetInfo

    recipe: GeneratorRecipe
    data: str
    output: str
    dataset: TokenDatasetInfo
    tokenizer: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    grad_accum: int = 1
    max_failures: int = 3
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        _check_batches(self.recipe.batch_size, self.num_workers, self.grad_accum, self.dataset.rows, self.data)

    def training_record(self) -> dict[str, Any]:
        """What the exported model records about the run that made it (besides its step)."""
        tokenizer = self.dataset.metadata.model
        return {"task": self.kind, "recipe": self.recipe.name, "ema": self.recipe.ema_decay is not None,
                "data": self.data, "tokenizer_sha256": tokenizer.weights_sha256, "tokenizer_source": tokenizer.source}


AnyJobConfig = Union[TrainJobConfig, GeneratorJobConfig]
JOB_KINDS: dict[str, type] = {TrainJobConfig.kind: TrainJobConfig, GeneratorJobConfig.kind: GeneratorJobConfig}


def job_from_dict(d: dict[str, Any], kind: str = TrainJobConfig.kind) -> AnyJobConfig:
    """The job config a worker receives, by its kind ("tokenizer" or "generator")."""
    return JOB_KINDS[kind].from_dict(d)
