"""The driver of jobs/train_tokenizer.py (and, with generator_job.resolve_generator_run, of
jobs/train_generator.py): check everything, then run Ray Train's TorchTrainer.

    resolve_run(...)  recipe + overrides, the dataset's files and metadata, the teacher and the
                      stage-1 checkpoint: every user mistake becomes one `ConfigError` line here,
                      before any Ray worker starts
    run(cfg)          Ray Data dataset -> TorchTrainer(loop.train_loop_per_worker), checkpoints and
                      restarts through Ray Train; prints where everything went. The same for a
                      tokenizer stage (`TrainJobConfig`) and the generator (`GeneratorJobConfig`)

The output layout is in pipelines/train/config.py.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ..commit import OutputBusyError, OutputLease
from ..runtime import forwarded_env, init_ray, load_model_uri, model_identity
from ..storage import check_output, get_fs, is_local, join_url, local_path, storage_failure, write_json_atomic
from .config import CHECKPOINTS_DIR, CONFIG_FILE, MODEL_DIR, AnyJobConfig, ConfigError, TrainJobConfig
from .data import DatasetError, check_layout, inspect_dataset
from .recipes import get_recipe

# ------------------------------------------------------------------------------------------------
# Driver-side checks


def _load(uri: str, option: str, what: str, kinds: tuple[type, ...]):
    try:
        return load_model_uri(uri, option=option, what=what, kinds=kinds)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def _absolute(uri: str | None) -> str | None:
    if uri is None or not is_local(uri):
        return uri
    return local_path(uri)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    d = dict(cfg_dict)
    d.pop("commitment_cost", None)  # stage 2 freezes the quantizer: its loss weight does not matter
    return d


def resolve_run(*, stage: int, preset: str, data: str, output: str, steps: int | None = None,
                batch_size: int | None = None, teacher: str | None = None, init: str | None = None,
                **resources: Any) -> TrainJobConfig:
    """Resolve and check a run; raises ConfigError (one line) for anything a user got wrong."""
    from titok_core import PRESETS, MaskGITVQGAN, TiTok, TiTokReleased

    storage_options = resources.get("storage_options")
    try:
        check_output(output, storage_options=storage_options)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if stage == 2 and init is None:
        raise ConfigError("--stage 2 fine-tunes a stage-1 model: pass --init <stage-1 output>/model")
    try:
        recipe = get_recipe(stage, preset).with_overrides(max_steps=steps, batch_size=batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model_cfg = PRESETS[recipe.model]
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
        _, start = _load(init, "--init", "stage-1 checkpoint", (TiTok, TiTokReleased))
        if _comparable(start.config.to_dict()) != _comparable(model_cfg.to_dict()):
            raise ConfigError(f"--init {init} is not a {preset} model (its config differs from preset {preset!r}); "
                              "pass the matching --preset")
        needs_teacher = isinstance(start, TiTok)
    else:
        needs_teacher = True

    recorded = info.metadata.model
    teacher = teacher or recorded.source
    if needs_teacher:
        path, model = _load(teacher, "--teacher", "teacher weights", (MaskGITVQGAN,))
        want = recorded.weights_sha256
        if model_identity(path, model)["weights_sha256"] != want:
            raise ConfigError(f"--teacher {teacher} is not the teacher that made --data {data} "
                              f"(weights sha256 differs from {want[:12]}...); pass that teacher's weights")
    try:
        return TrainJobConfig(recipe=recipe, data=data, output=output, dataset=info, teacher=teacher, init=init,
                              **resources)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _cause(error: BaseException) -> str:
    """One line for a failed run: a data problem a worker found (DatasetError, the object store) if
    there is one anywhere in Ray's error text, else the error's first line."""
    text = str(error)
    for marker in ("DatasetError: ",):
        for line in text.splitlines():
            if marker in line:
                return line.split(marker, 1)[1].strip()[:500]
    outage = storage_failure(error)
    if outage:
        return f"storage unreachable or failing ({outage}); rerun the same command to resume from the last checkpoint"
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:500]}"


def finished_step(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The `training` record of an already exported model in `output`, if there is one."""
    fs, path = get_fs(join_url(output, MODEL_DIR, "config.json"), storage_options=storage_options)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path)).get("training")


def check_previous_run(cfg: AnyJobConfig) -> dict[str, Any] | None:
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


def run(cfg: AnyJobConfig, ray_address: str | None = None) -> int:
    """Train (or resume, or do nothing if finished) under the output's lease; returns the exit code.

    Raises:
        ConfigError: another run is writing the same output.
    """
    try:
        with OutputLease(cfg.output, "train", cfg.storage_options):
            return _train(cfg, ray_address)
    except OutputBusyError as e:
        raise ConfigError(str(e)) from None


def _dataset(cfg: AnyJobConfig, env: dict[str, str]):
    """The Ray Dataset of the run's task: tokens for the generator, crops (and codes) for the tokenizer."""
    if cfg.kind == "generator":
        from .token_data import build_token_dataset
        return build_token_dataset(cfg.dataset, cfg.recipe.seed, storage_options=cfg.storage_options, env=env)
    from .data import build_dataset
    r = cfg.recipe
    return build_dataset(cfg.dataset, r.seed, with_codes=r.stage == 1, storage_options=cfg.storage_options, env=env)


def _train(cfg: AnyJobConfig, ray_address: str | None) -> int:
    done = check_previous_run(cfg)
    model_url = join_url(cfg.output, MODEL_DIR)
    if done is not None:
        print(f"already trained: {model_url} is at step {done['step']} of {cfg.recipe.max_steps} "
              f"({cfg.recipe.name}); nothing to do (raise --steps to train further)")
        return 0
    write_json_atomic(join_url(cfg.output, CONFIG_FILE), cfg.to_dict(), cfg.storage_options)

    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from .data import pyarrow_filesystem
    from .loop import train_loop_per_worker

    init_ray(ray_address)
    r = cfg.recipe
    env = forwarded_env()
    dataset = _dataset(cfg, env)
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
        train_loop_config={"job": cfg.to_dict(), "kind": cfg.kind},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=CHECKPOINTS_DIR, storage_path=storage_path, storage_filesystem=storage_fs,
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
        print(f"error: training failed: {_cause(e)}", file=sys.stderr)
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
          f"checkpoints  {join_url(cfg.output, CHECKPOINTS_DIR)}\n"
          f"metrics      {join_url(cfg.output, 'metrics.jsonl')}, metrics.csv, tensorboard/, images/")
    return 0


__all__ = ["ConfigError", "TrainJobConfig", "check_previous_run", "resolve_run", "run"]
