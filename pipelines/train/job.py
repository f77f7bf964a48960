"""The driver of jobs/train_tokenizer.py: check everything, then run Ray Train's TorchTrainer.

    prepare(args)   recipe + overrides, the dataset's files and metadata, the teacher and the
                    stage-1 checkpoint: every user mistake becomes one `ConfigError` line here,
                    before any Ray worker starts
    run(cfg)        Ray Data dataset -> TorchTrainer(train_loop.train_loop_per_worker), checkpoints
                    and restarts through Ray Train; prints where everything went

Output layout (`--output`, local or s3://):
    train_config.json   the resolved job config (recipe, data, workers, ...)
    checkpoints/        Ray Train run: step_XXXXXXXX/ (state.pt, rng_rank*.pt, train_config.json)
    metrics.jsonl, metrics.csv, tensorboard/, images/   (pipelines/train_logging.py)
    model/              the exported model (titok_core.load_model loads it)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from .recipes import Recipe, get_recipe
from .storage import fetch_to_cache, get_fs, is_local, join_url, write_json_atomic
from .train_data import DatasetError, DatasetInfo, check_layout, inspect_dataset
from .train_logging import CONFIG_FILE, MODEL_DIR, local_path

CHECKPOINTS = "checkpoints"
FAIL_AT_STEP_ENV = "TITOK_TRAIN_FAIL_AT_STEP"  # fault injection for tests: SIGKILL the last worker once
FORWARDED_ENV_PREFIXES = ("AWS_", "TITOK_", "HF_", "TORCH_HOME")


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
    def from_dict(cls, d: dict[str, Any]) -> "TrainJobConfig":
        d = dict(d)
        d["recipe"] = Recipe.from_dict(d["recipe"])
        d["dataset"] = DatasetInfo.from_dict(d["dataset"])
        return cls(**d)


# ------------------------------------------------------------------------------------------------
# Driver-side checks


def _load(uri: str, option: str, what: str):
    from titok_core import load_model
    try:
        path = fetch_to_cache(uri, what=what, option=option)
        return path, load_model(path)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    except ValueError as e:  # CheckpointMismatchError and friends
        raise ConfigError(f"{option} {uri}: {str(e).splitlines()[0]}") from None


def _absolute(uri: str | None) -> str | None:
    if uri is None or not is_local(uri):
        return uri
    return local_path(uri)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    d = dict(cfg_dict)
    d.pop("commitment_cost", None)  # stage 2 freezes the quantizer: its loss weight does not matter
    return d


def prepare(*, stage: int, preset: str, data: str, output: str, steps: int | None = None,
            batch_size: int | None = None, teacher: str | None = None, init: str | None = None,
            **resources: Any) -> TrainJobConfig:
    """Resolve and check a run; raises ConfigError (one line) for anything a user got wrong."""
    from pipelines.encode_stage import model_identity
    from titok_core import PRESETS, MaskGITVQGAN, TiTok, TiTokReleased

    if stage == 2 and init is None:
        raise ConfigError("--stage 2 fine-tunes a stage-1 model: pass --init <stage-1 output>/model")
    try:
        recipe = get_recipe(stage, preset).with_overrides(max_steps=steps, batch_size=batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model_cfg = PRESETS[recipe.model]
    storage_options = resources.get("storage_options")
    # Ray Train workers run in their own working directory: every local path must be absolute.
    data, output = _absolute(data), _absolute(output)
    teacher, init = _absolute(teacher), _absolute(init)
    for key in ("lpips_weights", "convnext_weights"):
        resources[key] = _absolute(resources.get(key))
    try:
        info = inspect_dataset(data, storage_options)
        check_layout(info, image_size=model_cfg.image_size, grid=model_cfg.dec_grid,
                     proxy_codebook_size=model_cfg.proxy_codebook_size,
                     teacher_config=model_cfg.pixel_vqgan.to_dict())
    except DatasetError as e:
        raise ConfigError(str(e)) from None

    if init is not None:
        _, start = _load(init, "--init", "stage-1 checkpoint")
        if not isinstance(start, (TiTok, TiTokReleased)):
            raise ConfigError(f"--init {init} holds a {type(start).__name__}, not a TiTok")
        if _comparable(start.config.to_dict()) != _comparable(model_cfg.to_dict()):
            raise ConfigError(f"--init {init} is not a {preset} model (its config differs from preset {preset!r}); "
                              "pass the matching --preset")
        needs_teacher = isinstance(start, TiTok)
    else:
        needs_teacher = True

    recorded = info.metadata.get("teacher", {})
    teacher = teacher or recorded.get("source")
    if teacher is None:
        raise ConfigError(f"--data {data} does not record its teacher; pass --teacher <MaskGIT-VQGAN weights>")
    if needs_teacher:
        path, model = _load(teacher, "--teacher", "teacher weights")
        if not isinstance(model, MaskGITVQGAN):
            raise ConfigError(f"--teacher {teacher} holds a {type(model).__name__}, not a MaskGIT-VQGAN")
        want = recorded.get("weights_sha256")
        if want and model_identity(path, model)["weights_sha256"] != want:
            raise ConfigError(f"--teacher {teacher} is not the teacher that made --data {data} "
                              f"(weights sha256 differs from {want[:12]}...); pass that teacher's weights")
    try:
        return TrainJobConfig(recipe=recipe, data=data, output=output, dataset=info, teacher=teacher, init=init,
                              **resources)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def finished_step(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The `training` record of an already exported model in `output`, if there is one."""
    fs, path = get_fs(join_url(output, MODEL_DIR, "config.json"), storage_options=storage_options)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path)).get("training")


def check_output(cfg: TrainJobConfig) -> dict[str, Any] | None:
    """Refuse an output that holds a different run; returns the finished-run record if complete."""
    fs, path = get_fs(join_url(cfg.output, CONFIG_FILE), storage_options=cfg.storage_options)
    if fs.exists(path):
        old = json.loads(fs.cat_file(path))
        new = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as stored
        same = {k: (old.get(k), new.get(k)) for k in ("data", "init")}
        old_recipe = {k: v for k, v in old.get("recipe", {}).items() if k != "max_steps"}
        new_recipe = {k: v for k, v in new["recipe"].items() if k != "max_steps"}
        diff = [k for k, (a, b) in same.items() if a != b] + (["recipe"] if old_recipe != new_recipe else [])
        if diff:
            raise ConfigError(f"--output {cfg.output} holds a different run (its {', '.join(diff)} differ); "
                              "rerun with the same settings to resume, or pick a new --output")
    done = finished_step(cfg.output, cfg.storage_options)
    if done and done.get("recipe") == cfg.recipe.name and done.get("step", 0) >= cfg.recipe.max_steps:
        return done
    return None


# ------------------------------------------------------------------------------------------------
# Ray Train


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def run(cfg: TrainJobConfig, ray_address: str | None = None) -> int:
    """Train (or resume, or do nothing if finished); returns the exit code."""
    done = check_output(cfg)
    model_url = join_url(cfg.output, MODEL_DIR)
    if done is not None:
        print(f"already trained: {model_url} is at step {done['step']} of {cfg.recipe.max_steps} "
              f"({cfg.recipe.name}); nothing to do (raise --steps to train further)")
        return 0
    write_json_atomic(join_url(cfg.output, CONFIG_FILE), cfg.to_dict(), cfg.storage_options)

    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .cli import init_ray
    from .train_data import build_dataset, pyarrow_filesystem
    from .train_loop import train_loop_per_worker

    init_ray(ray_address)
    r = cfg.recipe
    env = forwarded_env()
    dataset = build_dataset(cfg.dataset, r.seed, with_codes=r.stage == 1, storage_options=cfg.storage_options, env=env)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # deterministic split and order: a resumed run reads what the lost one would have
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    storage_fs, storage_path = pyarrow_filesystem(cfg.output, cfg.storage_options)
    if storage_fs is None:
        storage_path = local_path(cfg.output)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg.to_dict()},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=CHECKPOINTS, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=r.keep_checkpoints),
            worker_runtime_env={"env_vars": env},
        ),
        datasets={"train": dataset},
        dataset_config=DataConfig(execution_options=ingest),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError after max_failures restarts, or a controller error
        print(f"error: training failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e) else ''}",
              file=sys.stderr)
        return 1
    if getattr(result, "error", None):
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    done = finished_step(cfg.output, cfg.storage_options)
    if not done or done.get("step", 0) < r.max_steps:
        print(f"error: training ended without exporting {model_url}", file=sys.stderr)
        return 1
    print(f"trained {r.name} to step {done['step']} in {time.perf_counter() - t0:.1f} s\n"
          f"model        {model_url}  (titok_core.load_model)\n"
          f"checkpoints  {join_url(cfg.output, CHECKPOINTS)}\n"
          f"metrics      {join_url(cfg.output, 'metrics.jsonl')}, metrics.csv, tensorboard/, images/")
    return 0


__all__ = ["ConfigError", "TrainJobConfig", "check_output", "prepare", "run"]
