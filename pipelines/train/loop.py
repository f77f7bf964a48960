"""The Ray Train worker loop every training task shares (`train_loop_per_worker`): the two tokenizer
stages and the generator.

    resume      ray.train.get_checkpoint(): after a worker failure (FailureConfig) or when the
                same command runs again (same RunConfig name + storage path), the latest
                checkpoint: models, EMA, optimizers, schedules, step, data position, RNG
    loop        micro-batches from this worker's dataset shard, made by the task's batch sampler
                -> task.train_step (DDP, grad accumulation) -> every log_every: metrics averaged
                over the window and workers -> every image_every: a PNG grid (tasks may draw none)
                -> every checkpoint_every: ray.train.report
    export      rank 0 writes the (EMA) model with titok_core.save_pretrained to <output>/model

Only rank 0 writes metrics, grids and the model; every rank writes its RNG state into checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from titok_core import save_pretrained

from .config import CONFIG_FILE, FAIL_AT_STEP_ENV, MODEL_DIR, AnyJobConfig, GeneratorJobConfig, job_from_dict
from .data import MATERIALIZE_BELOW_BYTES, iterate_batches
from .generator_task import GeneratorTask
from .outputs import (
    ATTEMPTS,
    METRICS_CSV,
    METRICS_JSONL,
    TENSORBOARD_DIR,
    MetricsLogger,
    RunFiles,
    make_grid,
    replace_dir,
    write_grid,
)
from .stages import Stage1Task, Stage2Task, TrainTask

log = logging.getLogger("titok.train")
CHECKPOINT_POLL_S = 2.0  # Ray Train V2's default worker poll interval (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)


@dataclass
class TrainPosition:
    """Where training is, as a checkpoint records it: optimizer steps done, and the data position
    (epoch, micro-batches each worker read in it, and how many rows such a micro-batch had over
    all workers)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    rows_per_batch: int = 0

    def rescaled(self, rows_per_batch: int) -> TrainPosition:
        """The same position for another worker count / micro-batch (resume on a resized cluster)."""
        if not self.rows_per_batch or self.rows_per_batch == rows_per_batch:
            return dataclasses.replace(self, rows_per_batch=rows_per_batch)
        return dataclasses.replace(self, batch=self.batch * self.rows_per_batch // rows_per_batch,
                                   rows_per_batch=rows_per_batch)


def make_task(job: AnyJobConfig, device: torch.device) -> TrainTask:
    if isinstance(job, GeneratorJobConfig):
        return GeneratorTask(job.recipe, device, job.tokenizer)
    if job.recipe.stage == 1:
        return Stage1Task(job.recipe, device, job.teacher)
    return Stage2Task(job.recipe, device, job.teacher, job.init, lpips_weights=job.lpips_weights,
                      convnext_weights=job.convnext_weights, pretrained_backbones=not job.random_backbones)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(task: TrainTask, progress: TrainPosition, job: AnyJobConfig, rank: int, metrics: dict[str, float]) -> None:
    """Every rank reports into the same checkpoint directory: rank 0 the state, each rank its RNG."""
    import ray.train
    with tempfile.TemporaryDirectory(prefix="titok-ckpt-") as d:
        if rank == 0:
            torch.save({"task": task.state_dict(), "progress": dataclasses.asdict(progress)}, Path(d) / "state.pt")
            (Path(d) / CONFIG_FILE).write_text(json.dumps(job.to_dict(), indent=2))
        torch.save(_rng_state(), Path(d) / f"rng_rank{rank}.pt")
        ray.train.report({"step": progress.step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"step_{progress.step:08d}")


def load_checkpoint(task: TrainTask, rank: int, device: torch.device) -> TrainPosition | None:
    import ray.train
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location=device, weights_only=False)
        task.load_state_dict(state["task"])
        rng = Path(d) / f"rng_rank{rank}.pt"
        if rng.exists():  # absent when the run restarts with more workers than it had
            _set_rng_state(torch.load(rng, weights_only=False))
    return TrainPosition(**state["progress"])


class Window:
    """Per-step metric tensors summed over a log window; averaged over steps and workers on `reduce`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        self.steps += 1
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def reduce(self) -> dict[str, float]:
        keys = sorted(self.sums)
        if not keys:
            return {}
        values = torch.stack([self.sums[k] / self.counts[k] for k in keys]).double().to(self.device)
        if dist.is_initialized():
            dist.all_reduce(values)
            values /= dist.get_world_size()
        return dict(zip(keys, values.tolist()))


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    job = job_from_dict(loop_config["job"], loop_config.get("kind", "tokenizer"))
    recipe = job.recipe
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))

    task = make_task(job, device)
    restored = load_checkpoint(task, rank, device)
    progress = (restored or TrainPosition()).rescaled(job.micro_batch * world)
    if restored is not None and rank == 0:
        log.info("resumed from checkpoint at step %d (epoch %d, batch %d)",
                 progress.step, progress.epoch, progress.batch)
    files = RunFiles(job.output, job.storage_options) if rank == 0 else None
    logger = MetricsLogger(files, task.metrics, progress.step) if files is not None else None
    if files is not None:
        files.download(ATTEMPTS)
        attempt = {"time": round(time.time(), 3), "resumed_from_step": progress.step if restored else None,
                   "workers": world, "max_steps": recipe.max_steps}
        with open(files.path(ATTEMPTS), "a") as f:  # one line per (re)start of the worker group
            f.write(json.dumps(attempt) + "\n")
    fail_at = int(os.environ.get(FAIL_AT_STEP_ENV, "0") or 0)
    reported_at = 0.0  # when this worker last reported a checkpoint

    if progress.step < recipe.max_steps:
        sampler = task.batch_sampler(job.dataset.metadata)
        batches = iterate_batches(ray.train.get_dataset_shard("train"), sampler, micro_batch=job.micro_batch,
                                  start_epoch=progress.epoch, start_batch=progress.batch,
                                  shuffle_seed=recipe.seed * 1000 + rank, shuffle_buffer=recipe.shuffle_buffer,
                                  cache=job.dataset.bytes < MATERIALIZE_BELOW_BYTES,
                                  decode_threads=max(1, round(job.cpus_per_worker)))
        window = Window(device)
        last: dict[str, float] = {}
        while progress.step < recipe.max_steps:
            micro = []
            for _ in range(job.grad_accum):
                progress.epoch, index, batch = next(batches)
                progress.batch = index + 1
                micro.append(batch)
            window.add(task.train_step(micro, progress.step))
            progress.step += 1
            step = progress.step
            final = step == recipe.max_steps

            if fail_at and restored is None and step == fail_at and rank == world - 1:
                # Ray Train's controller collects reported checkpoints when it polls the workers (every
                # 2 s): a worker dying sooner after a report loses that checkpoint, so wait for the poll.
                time.sleep(max(0.0, reported_at + 2 * CHECKPOINT_POLL_S - time.perf_counter()))
                os.kill(os.getpid(), signal.SIGKILL)  # injected worker death (tests): FailureConfig restarts

            if step % recipe.log_every == 0 or final:
                elapsed = time.perf_counter() - window.t0
                metrics = window.reduce()
                metrics.update(task.log_metrics())
                metrics["images_per_s"] = window.steps * recipe.batch_size / max(elapsed, 1e-9)
                metrics["epoch"] = progress.epoch
                last = metrics
                window.reset()
                if logger is not None:
                    logger.log(step, metrics, recipe.max_steps)
            if rank == 0 and (step % recipe.image_every == 0 or final):
                pair = task.grid(micro[-1], recipe.num_images)
                if pair is not None:
                    grid = make_grid(*pair)
                    write_grid(files, step, grid)
                    logger.image(step, grid)
            if step % recipe.checkpoint_every == 0 or final:
                if files is not None:
                    files.publish(METRICS_JSONL, METRICS_CSV, TENSORBOARD_DIR, ATTEMPTS)
                save_checkpoint(task, progress, job, rank, last)
                reported_at = time.perf_counter()
        batches.close()

    if rank == 0:
        export(task, job, progress, files)
        logger.close()
        files.publish(METRICS_JSONL, METRICS_CSV, TENSORBOARD_DIR, ATTEMPTS)


def export(task: TrainTask, job: AnyJobConfig, progress: TrainPosition, files: RunFiles) -> None:
    """The (EMA) model in titok_core's format, with what produced it, at <output>/model."""
    recipe = job.recipe
    training = {**job.training_record(), "step": progress.step}
    staging = files.path(MODEL_DIR + ".tmp")
    save_pretrained(task.export_model(), staging, extra={"training": training})
    replace_dir(staging, files.path(MODEL_DIR))
    files.publish(MODEL_DIR)
    log.info("exported %s at step %d to %s/%s", recipe.name, progress.step, files.output.rstrip("/"), MODEL_DIR)
