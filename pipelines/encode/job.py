"""The batch job behind precompute_proxy.py and tokenize_dataset.py: shards -> codes per view -> Parquet.

Ray Data streaming, one row per input shard end to end (so a shard is never split and is the
unit of commit), in Arrow batches whose large values pass between stages without copies
(`schema.ShardRow`):

    from_items(shards not yet committed)
      -> decode_shards          CPU tasks: read tar, quarantine bad samples, resize, store base image
      -> EncodeViews + commit   actor pool, one model per actor (GPU when asked): codes for every view,
                                then (write_encoded_shards) Parquet + errors + success record,
                                atomically, per shard; with a GPU two calls per actor, so one
                                shard's commit overlaps the next one's forward pass
      -> driver                 progress, images/s, job summary

With as many CPUs per decode task as per actor and no GPU (the CPU defaults), Ray Data fuses the
decoding into the actor too. The commit runs in the model actor rather than in tasks of its own: a
separate write operator holds a task's worth of CPUs in Ray Data's per-operator reservation even
while it waits, which on a small node left decoding one task at a time (75% busy on 2 cores,
benchmarks/cpu_side.py), and every shard's stored images made one more trip through the object store.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .. import commit
from .. import schema as S
from ..preprocess import view_specs
from ..runtime import forwarded_env, init_ray
from ..storage import expand_inputs, get_fs, is_local, s3_endpoint, storage_failure
from .decode import DecodeOptions, decode_shards
from .model import FREE_MODEL_ENV, INFERENCE_PRECISIONS

log = logging.getLogger("titok.encode")


@dataclass(frozen=True)
class EncodeJobConfig:
    """One run of the shard-encoding job.

    Args:
        input: shard spec (brace pattern, glob, directory, list file; local or fsspec URL).
        output: output directory (local or fsspec URL).
        model: checkpoint path or URL (already validated / fetched by the caller).
        model_option: the CLI option that named the model, for messages.
        dataset: the metadata every output file records: views, crop size, codes per view, the
            model's identity, whether (and how) base images are stored.
        decode: image decoding options (its resolution is the dataset's crop size).
        workers: model actors; num_gpus / num_cpus: resources of one actor.
        decode_cpus: CPUs per decode task.
        threads: torch threads inside a model actor.
        batch_size: crops per forward pass.
        precision: auto | fp32 | bf16.
        max_error_rate: exit non-zero above this fraction of quarantined samples.
        overwrite: redo committed shards.
        storage_options: fsspec options (custom S3 endpoint).
        input_suffix: ".tar" for WebDataset shards, ".parquet" for a proxy-code dataset.
        verify_fraction: decode this fraction of tokens back to pixels and report PSNR / LPIPS.
    """

    input: str
    output: str
    model: str
    model_option: str
    dataset: S.DatasetMetadata
    decode: DecodeOptions = DecodeOptions()
    workers: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    decode_cpus: float = 1.0
    threads: int | None = None
    batch_size: int = 32
    precision: str = "auto"
    max_error_rate: float = 0.05
    overwrite: bool = False
    storage_options: dict | None = None
    input_suffix: str = ".tar"
    verify_fraction: float = 0.0

    def __post_init__(self) -> None:
        view_specs(self.dataset.views)  # raises on an unknown view set
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: use one of {INFERENCE_PRECISIONS}")
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError("workers and batch_size must be >= 1")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate {self.max_error_rate} must be in [0, 1]")
        assert self.decode.resolution == self.dataset.crop_size, "the crop size is the resize's shorter side"


def plan(cfg: EncodeJobConfig, check_dataset: bool = True) -> tuple[list[tuple[str, str]], dict[str, dict]]:
    """(shards to do as (url, name), committed records of the shards skipped). Run under the output's
    lease; `check_dataset`: refuse to continue an output that holds another dataset (`check_same_dataset`)."""
    urls = expand_inputs(cfg.input, cfg.storage_options, suffix=cfg.input_suffix)
    names = commit.unique_names(urls)
    commit.remove_stale_temporaries(cfg.output)
    done = {} if cfg.overwrite else commit.committed(cfg.output, cfg.storage_options)
    if done and check_dataset:
        check_same_dataset(cfg, next(iter(done)))
    todo = [(u, n) for u, n in zip(urls, names) if n not in done]
    skipped = {n: done[n] for n in names if n in done}
    return todo, skipped


def check_same_dataset(cfg: EncodeJobConfig, name: str) -> None:
    """A rerun continues the dataset already in `cfg.output` only if it makes the same dataset (model,
    views, crop size, stored image format): otherwise its committed shards would mix with new ones.

    Raises:
        ValueError: naming what differs and the two ways out.
    """
    import pyarrow.parquet as pq
    url = commit.data_url(cfg.output, name)
    fs, path = get_fs(url, storage_options=cfg.storage_options)
    with fs.open(path, "rb") as f:
        old = S.DatasetMetadata.from_schema(pq.ParquetFile(f).schema_arrow)
    new = cfg.dataset
    if old is None:
        raise ValueError(f"--output {cfg.output} holds {name}.parquet, which these jobs did not write; "
                         "pick another --output")
    differs = [what for what, a, b in (
        ("model", old.model.weights_sha256, new.model.weights_sha256), ("views", old.views, new.views),
        ("crop size", old.crop_size, new.crop_size), ("stored image format", old.image_format, new.image_format),
        ("kind of codes", old.codes_column, new.codes_column)) if a != b]
    if differs:
        raise ValueError(f"--output {cfg.output} already holds a dataset with another {', '.join(differs)} "
                         f"(e.g. {name}.parquet); rerun with its settings to finish it, pass --overwrite to redo it, "
                         "or pick another --output")


class ShardTally:
    """Counts shard results as they stream in; a progress bar, and images/s every `every` seconds."""

    def __init__(self, total_shards: int, every: float = 10.0):
        from tqdm import tqdm
        self.bar = tqdm(total=total_shards, unit="shard", desc="shards", file=sys.stderr, dynamic_ncols=True)
        self.t0 = self.last = time.perf_counter()
        self.every = every
        self.images = self.errors = self.failed = self.done = self.bytes = 0
        self.reasons: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stats: Counter[str] = Counter()  # summed per-shard statistics (bf16 agreement, verification)

    def add(self, r: S.ShardResult) -> None:
        if r.failed:  # unreadable: not committed; counts as one error so the rate sees it
            self.failed += 1
            self.errors += 1
            self.reasons.update(e.reason for e in r.errors[-1:])
            self.failures.append(f"{r.shard}: {'; '.join(e.detail for e in r.errors)[:300]}")
        else:
            self.done += 1
            self.images += r.rows
            self.errors += len(r.errors)
            self.reasons.update(e.reason for e in r.errors)
            self.bytes += r.bytes
        self.stats.update(r.stats)
        self.bar.update(1)
        self.bar.set_postfix(images=self.images, errors=self.errors, img_s=f"{self.rate:.1f}")
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            log.info("%d/%d shards, %d images, %d errors, %.1f images/s",
                     self.done + self.failed, self.bar.total, self.images, self.errors, self.rate)

    @property
    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.t0, 1e-9)


class Stage(NamedTuple):
    """A stage of the shard pipeline: a callable class (the model, one per actor) or a function (the
    commit) from an Arrow batch of one kind of `schema.ShardRow` to a batch of the next, with its
    keyword arguments (constructor arguments for a class)."""

    fn: Callable
    kwargs: dict[str, Any]


def encode_stages(cfg: EncodeJobConfig) -> tuple[Stage, Stage]:
    """This job's model stage (codes for every view) and write stage (one committed Parquet file)."""
    from .model import EncodeViews
    from .write import write_encoded_shards

    model = Stage(EncodeViews, dict(model_uri=cfg.model, option=cfg.model_option, views=cfg.dataset.views,
                                    crop=cfg.dataset.crop_size, batch_size=cfg.batch_size,
                                    codes_per_view=cfg.dataset.codes_per_view, precision=cfg.precision,
                                    threads=cfg.threads, verify_fraction=cfg.verify_fraction))
    write = Stage(write_encoded_shards, dict(output=cfg.output, metadata=cfg.dataset, storage_options=cfg.storage_options))
    return model, write


class ModelThenCommit:
    """Ray Data callable class: a shard's model stage, then its commit, in one actor call.

    With a GPU the actor runs `CALLS_PER_GPU_ACTOR` calls at once on threads (`calls_per_actor`): the
    model runs one call at a time (a lock; one model, one GPU), the commits of earlier shards run
    beside it (Parquet encoding and storage writes mostly release the GIL).
    """

    def __init__(self, model: Stage, write: Stage):
        self.model = model.fn(**model.kwargs)
        self.write, self.write_kwargs = write.fn, write.kwargs
        self.model_lock = threading.Lock()

    def __call__(self, batch):
        with self.model_lock:
            encoded = self.model(batch)
        return self.write(encoded, **self.write_kwargs)


CALLS_PER_GPU_ACTOR = 2


def calls_per_actor(cfg: EncodeJobConfig) -> int:
    """Calls one model actor runs at once: two when its model runs on a GPU (or stands for one: the
    benchmarks' free model), so that one shard's commit overlaps the next one's forward pass; one on
    CPU, where the model already keeps the actor's CPUs busy and a second call only competes with it
    (benchmarks/precompute.py, bf16: 0.88-0.90x a plain loop with two calls, 1.01x with one)."""
    return CALLS_PER_GPU_ACTOR if cfg.num_gpus > 0 or os.environ.get(FREE_MODEL_ENV) else 1


def model_then_commit(model: Stage) -> type:
    """`ModelThenCommit` named after the model class, which is what Ray Data's progress bars and logs show."""
    return type(f"{model.fn.__name__}ThenCommit", (ModelThenCommit,), {"__module__": __name__})


def build_dataset(cfg: EncodeJobConfig, todo: list[tuple[str, str]], stages: tuple[Stage, Stage] | None = None):
    """decode -> model + commit over the shards `todo`, one row per shard.

    `stages` (model, write) replaces this job's own (`encode_stages`): another shard job (evaluation)
    keeps the decoding, resources, planning, commits and summary, and brings its own model work. Its
    write stage must commit each shard and return `schema.ShardResult` rows.
    """
    import ray
    from ray.data import ActorPoolStrategy

    model, write = stages or encode_stages(cfg)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    # Ray Data's per-operator resource reservation stays on: it is what holds decoding back when the
    # model falls behind. Without it every decode task is submitted at once (32 queued on 2 CPUs) and
    # decoded shards pile up in the object store (benchmarks/cpu_side.py).
    # One row per shard: never let Ray Data coalesce several shards into one task.
    ds = ray.data.from_items([{"shard": u, "name": n} for u, n in todo], override_num_blocks=len(todo))
    # Whole blocks (one shard each) as Arrow tables; storage credentials / endpoint reach every task,
    # also on a cluster started without them.
    common = {"batch_size": None, "batch_format": "pyarrow", "runtime_env": {"env_vars": forwarded_env()}}
    ds = ds.map_batches(decode_shards, fn_kwargs={"opts": cfg.decode, "storage_options": cfg.storage_options},
                        num_cpus=cfg.decode_cpus, **common)
    calls = calls_per_actor(cfg)
    pool = ActorPoolStrategy(size=cfg.workers, max_concurrent_calls_per_actor=calls,
                             enable_true_multi_threading=calls > 1)
    return ds.map_batches(model_then_commit(model), fn_constructor_kwargs={"model": model, "write": write},
                          compute=pool, num_gpus=cfg.num_gpus, num_cpus=cfg.num_cpus, **common)


def run(cfg: EncodeJobConfig, ray_address: str | None = None, *,
        stages: tuple[Stage, Stage] | None = None) -> tuple[dict[str, Any], int]:
    """Run the job; returns (summary, exit code). Prints progress; writes `<output>/_summary.json`.

    `stages`: another job's model and write stages (see `build_dataset`); that job checks that a rerun
    continues its own output (this job's check reads the dataset metadata of its Parquet files).

    Raises:
        ValueError: the input spec names no shards (before Ray starts or anything is written).
        OutputBusyError: another run holds the output's lease.
    """
    t0 = time.perf_counter()
    expand_inputs(cfg.input, cfg.storage_options, suffix=cfg.input_suffix)  # bad specs fail before the lease
    with commit.OutputLease(cfg.output, "encode", cfg.storage_options):
        todo, skipped = plan(cfg, check_dataset=stages is None)
        tally = ShardTally(len(todo))
        outage = None
        try:
            if todo:
                init_ray(ray_address)
                for batch in build_dataset(cfg, todo, stages).iter_batches(batch_size=None, batch_format="pyarrow"):
                    for result in S.ShardResult.from_table(batch):
                        tally.add(result)
        except Exception as e:
            outage = storage_failure(e)
            if outage is None:
                raise
        finally:
            tally.bar.close()
        summary = _summary(cfg, tally, skipped, time.perf_counter() - t0)
        if outage is not None:  # committed shards are safe; say so instead of a traceback
            where = s3_endpoint(None) if not is_local(cfg.output) else None
            summary["status"] = (f"failed: storage unreachable or failing at {where or cfg.output} ({outage}); "
                                 f"{summary['shards_skipped'] + summary['shards_done']} shards committed; "
                                 "rerun the same command to resume")
            try:
                commit.write_summary(cfg.output, summary, cfg.storage_options)
            except Exception as e:
                log.warning("the summary could not be written either (%s)", storage_failure(e) or e)
            return summary, 1
        commit.write_summary(cfg.output, summary, cfg.storage_options)
        return summary, 0 if summary["status"].startswith("ok") else 1


def _summary(cfg: EncodeJobConfig, tally: ShardTally, skipped: dict[str, dict], wall: float) -> dict[str, Any]:
    prior_images = sum(r["rows"] for r in skipped.values())
    prior_errors = sum(r["errors"] for r in skipped.values())
    reasons = tally.reasons + Counter({k: v for r in skipped.values() for k, v in r["errors_by_reason"].items()})
    total_images, total_errors = tally.images + prior_images, tally.errors + prior_errors
    seen = total_images + total_errors
    error_rate = total_errors / seen if seen else 0.0
    meta = cfg.dataset.to_dict()
    summary = {
        "input": cfg.input, "output": cfg.output, "views": cfg.dataset.views,
        "shards_done": tally.done, "shards_skipped": len(skipped), "shards_failed": tally.failed,
        "failed_shards": tally.failures,
        "images": tally.images, "errors": tally.errors,
        "images_total": total_images, "errors_total": total_errors,
        "errors_by_reason": dict(sorted(reasons.items())),
        "error_rate": round(error_rate, 6),
        "images_per_s": round(tally.images / wall, 3) if wall else 0.0,
        "bytes_per_row": round(tally.bytes / tally.images, 1) if tally.images else None,
        "wall_s": round(wall, 2),
        "model": {k: meta[k] for k in ("teacher", "proxy_codebook_size", "tokenizer", "codebook_size") if k in meta},
        "precision": cfg.precision,
    }
    st = tally.stats
    if st["bf16_compared"]:
        summary["bf16_codes_agreeing_with_fp32"] = round(st["bf16_agree"] / st["bf16_compared"], 6)
        summary["bf16_codes_compared"] = int(st["bf16_compared"])
    if cfg.verify_fraction > 0:
        summary["verify"] = {
            "fraction": cfg.verify_fraction, "images": st["verify_count"],
            "psnr_db": round(st["verify_psnr_sum"] / st["verify_count"], 3) if st["verify_count"] else None,
            "lpips": round(st["verify_lpips_sum"] / st["verify_lpips_count"], 4) if st["verify_lpips_count"] else None,
        }
    reason = None
    if total_images == 0:
        reason = "no image could be read"
    elif error_rate > cfg.max_error_rate:
        reason = f"error rate {error_rate:.3%} is above --max-error-rate {cfg.max_error_rate:.3%}"
    if reason:
        summary["status"] = f"failed: {reason}"
    elif tally.failed:  # within the error budget, but the output is incomplete until a rerun
        summary["status"] = f"ok, incomplete: {tally.failed} shard(s) could not be read; rerun to retry them"
    else:
        summary["status"] = "ok"
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """One screen for humans."""
    lines = [
        f"status            {summary['status']}",
        f"shards            {summary['shards_done']} done, {summary['shards_skipped']} skipped (already committed), "
        f"{summary['shards_failed']} failed",
        f"images            {summary['images']} this run, {summary['images_total']} in the dataset",
        f"quarantined       {summary['errors_total']} ({summary['error_rate']:.2%})" + _reasons_table(summary),
        f"throughput        {summary['images_per_s']} images/s over {summary['wall_s']} s",
        f"bytes per row     {summary['bytes_per_row']}",
    ]
    if "verify" in summary:
        v = summary["verify"]
        lp = "n/a (LPIPS weights not available)" if v["lpips"] is None else v["lpips"]
        lines.append(f"verification      {v['images']} images decoded: PSNR {v['psnr_db']} dB, LPIPS {lp}")
    if "bf16_codes_agreeing_with_fp32" in summary:
        lines.append(f"bf16 vs fp32      {summary['bf16_codes_agreeing_with_fp32']:.4%} of "
                     f"{summary['bf16_codes_compared']} codes agree (the first batches of each model worker, "
                     "also run in fp32)")
    for f in summary["failed_shards"][:5]:
        lines.append(f"failed shard      {f}")
    lines.append(f"output            {summary['output']}  (summary: _summary.json, quarantine: _errors/)")
    if summary["status"].startswith("failed: storage"):
        lines.append(f"error: {summary['status'].removeprefix('failed: ')}")
    return "\n".join(lines)


def _reasons_table(summary: dict[str, Any]) -> str:
    """One indented line per quarantine reason, the counts in a column after the longest name."""
    reasons = summary["errors_by_reason"]
    width = max((len(k) for k in reasons), default=0) + 2
    return "".join(f"\n  {k:{width}s}{v}" for k, v in reasons.items())
