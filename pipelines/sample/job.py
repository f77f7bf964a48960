"""The sampling job (jobs/sample_generator.py): a generator + tokenizer -> N images per class -> PNGs,
one chunk file per chunk of classes, the ADM `.npz`, a summary.

Ray Data streaming, one row per chunk of classes end to end (the unit of commit, as a shard is for
the shard jobs):

    from_items(chunks not yet committed)
      -> SampleChunks   actor pool, a generator and a tokenizer per actor (GPU when asked):
                        tokens -> images for every (class, index) of the chunk, seeded per chunk
      -> write_chunks   CPU tasks: PNGs, then the chunk's Parquet + success record (pipelines.commit)
      -> driver         progress, images/s; once every chunk is committed: the batch's description
                        (report.describe_batch) and the npz, rewritten only when the chunks changed;
                        with --reference-stats gFID and IS (pipelines.sample.metrics) -> metrics.json

Output layout (`--output`, local or URL):
    sample_config.json               what decides the images (models, sampling, classes, seed, chunks);
                                     a rerun must match it (or pass --overwrite)
    images/<class>/<class>_<i>.png   every image, 4-digit class and index
    tokens/chunk-XXXXXX.parquet      per chunk: key, label, sample_index, file, tokens (pipelines.schema);
                                     `pd.read_parquet("<output>/tokens")` is the whole batch's table
    tokens/_success/, _errors/       the commit records (pipelines.commit; _errors stay empty)
    tokens/_stats/chunk-XXXXXX.npz   with --reference-stats: each image's features and logits
    metrics.json                     with --reference-stats: gFID, IS, what they are measured against
    samples_<N>x<H>x<W>x3.npz        arr_0 uint8 NHWC + arr_1 labels, for the ADM evaluator
    _summary.json                    the last run's summary (throughput, the batch, the npz's SHA-256)
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import commit
from .. import schema as S
from ..evaluate.features import FeatureSpec
from ..evaluate.report import Reference
from ..runtime import forwarded_env, init_ray
from ..storage import exists, get_fs, is_local, join_url, read_json, s3_endpoint, storage_failure, write_json_atomic
from . import report
from .plan import Chunk, make_chunks

log = logging.getLogger("titok.sample")

CONFIG_FILE = "sample_config.json"
METRICS_FILE = "metrics.json"
IMAGES_DIR = "images"
TABLE_DIR = "tokens"  # the committed chunk files: a Parquet dataset of its own, apart from the PNGs


@dataclass(frozen=True)
class SampleJobConfig:
    """One sampling run.

    Args:
        generator / tokenizer: model URIs (checked by the caller); generator_identity /
            tokenizer_identity: what `runtime.model_identity` says of them (recorded, compared on rerun).
        output: output directory (local or fsspec URL).
        sampling: `titok_core.SamplingConfig.to_dict()`.
        classes: class labels, in the order they are generated; per_class: images per class.
        num_classes: the generator's class count (the batch is described against it).
        seed: the run's seed; classes_per_chunk: classes per unit of work and commit.
        batch_size: images per `generate` call; precision: auto | fp32 | bf16 (pipelines.sample.model).
        workers / num_gpus / num_cpus: model actors and the resources of each; write_cpus: per write task.
        threads: torch threads per actor (None: max(1, int(num_cpus))); fixed by the command, so that
            results do not depend on the number of workers.
        overwrite: delete what an earlier run wrote and start over.
        storage_options: fsspec options (custom S3 endpoint).
        features / reference: the gFID / IS feature network and the checked reference statistics
            (None: no metrics). They do not change the images: a finished output can be scored later.
        paper_size / paper_sampling: the paper's generator size this one equals (None: another) and
            whether the sampling settings are that size's preset (metrics.json says so).
    """

    generator: str
    tokenizer: str
    output: str
    sampling: dict[str, Any]
    classes: tuple[int, ...]
    per_class: int
    num_classes: int
    generator_identity: dict[str, Any]
    tokenizer_identity: dict[str, Any]
    seed: int = 42
    classes_per_chunk: int = 4
    batch_size: int = 100
    precision: str = "auto"
    workers: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    write_cpus: float = 1.0
    threads: int | None = None
    overwrite: bool = False
    storage_options: dict | None = None
    features: FeatureSpec | None = None
    reference: Reference | None = field(default=None, compare=False)
    paper_size: str | None = None
    paper_sampling: bool = False

    def __post_init__(self) -> None:
        if not self.classes or self.per_class < 1 or self.classes_per_chunk < 1 or self.batch_size < 1:
            raise ValueError("classes, --per-class, --classes-per-chunk and --batch-size must not be empty or 0")

    @property
    def table(self) -> str:
        """Where the chunk files and their commit records live."""
        return join_url(self.output, TABLE_DIR)

    @property
    def chunks(self) -> list[Chunk]:
        return make_chunks(self.classes, self.per_class, self.classes_per_chunk)

    def decisive(self) -> dict[str, Any]:
        """Everything the images depend on: a rerun continues an output only if this is equal."""
        return {"generator_sha256": self.generator_identity["weights_sha256"],
                "tokenizer_sha256": self.tokenizer_identity["weights_sha256"], "sampling": self.sampling,
                "classes": list(self.classes), "per_class": self.per_class, "seed": self.seed,
                "classes_per_chunk": self.classes_per_chunk, "batch_size": self.batch_size,
                "precision": self.precision, "threads": self.threads}

    def record(self) -> dict[str, Any]:
        return {**self.decisive(), "generator": self.generator_identity, "tokenizer": self.tokenizer_identity,
                "num_classes": self.num_classes, "output": self.output}


def check_same_run(cfg: SampleJobConfig) -> None:
    """A rerun continues `cfg.output` only with the same images to make; --overwrite clears it first.

    Raises:
        ValueError: naming what differs and the two ways out.
    """
    url = join_url(cfg.output, CONFIG_FILE)
    if cfg.overwrite:
        _clear(cfg)
    elif exists(url, cfg.storage_options):
        old = read_json(url, cfg.storage_options)
        new = cfg.decisive()
        differs = [k for k in new if old.get(k) != new[k]]
        if differs:
            raise ValueError(f"--output {cfg.output} holds samples made with another {', '.join(differs)}; rerun with "
                             "its settings to finish it, pass --overwrite to start over, or pick another --output")
    write_json_atomic(url, cfg.record(), cfg.storage_options)


def _clear(cfg: SampleJobConfig) -> None:
    """Remove what a sampling run writes (and only that) from the output."""
    fs, root = get_fs(cfg.output, storage_options=cfg.storage_options)
    if not fs.exists(root):
        return
    names = [TABLE_DIR, IMAGES_DIR, CONFIG_FILE, commit.SUMMARY, METRICS_FILE]
    targets = [f"{root.rstrip('/')}/{n}" for n in names] + fs.glob(f"{root.rstrip('/')}/samples_*x3.npz")
    for t in targets:
        if fs.exists(t):
            fs.rm(t, recursive=True)
    fs.invalidate_cache()


def _remove_stale_temporaries(cfg: SampleJobConfig) -> None:
    """Temporary files a killed run left in a local output (its chunk files' and its PNGs')."""
    commit.remove_stale_temporaries(cfg.table)
    if is_local(cfg.output):
        fs, root = get_fs(join_url(cfg.output, IMAGES_DIR), storage_options=cfg.storage_options)
        for path in fs.glob(f"{root}/*/.*.tmp") if fs.exists(root) else []:
            fs.rm_file(path)


def build_dataset(cfg: SampleJobConfig, todo: list[Chunk]):
    import ray
    from ray.data import ActorPoolStrategy

    from .model import SampleChunks
    from .write import write_chunks

    ray.data.DataContext.get_current().enable_progress_bars = True
    # One row per chunk: never let Ray Data coalesce chunks into one task.
    ds = ray.data.from_items([{"index": c.index, "classes": list(c.classes), "per_class": c.per_class} for c in todo],
                             override_num_blocks=len(todo))
    # Whole blocks (one chunk each) as Arrow tables (schema.ShardRow), as in the shard jobs.
    common = {"batch_size": None, "batch_format": "pyarrow", "runtime_env": {"env_vars": forwarded_env()}}
    ds = ds.map_batches(SampleChunks,
                        fn_constructor_kwargs=dict(generator=cfg.generator, tokenizer=cfg.tokenizer,
                                                   sampling=cfg.sampling, seed=cfg.seed, batch_size=cfg.batch_size,
                                                   precision=cfg.precision,
                                                   threads=cfg.threads or max(1, int(cfg.num_cpus)),
                                                   features=cfg.features),
                        compute=ActorPoolStrategy(size=cfg.workers), num_gpus=cfg.num_gpus, num_cpus=cfg.num_cpus,
                        **common)
    return ds.map_batches(write_chunks, fn_kwargs=dict(output=cfg.output, table=cfg.table, seed=cfg.seed,
                                                       storage_options=cfg.storage_options),
                          num_cpus=cfg.write_cpus, **common)


def run(cfg: SampleJobConfig, ray_address: str | None = None) -> tuple[dict[str, Any], int]:
    """Sample every chunk not yet committed, then describe the batch and write the npz; returns
    (summary, exit code) and writes `<output>/_summary.json`.

    Raises:
        ValueError: the output holds another run's samples (before Ray starts).
        OutputBusyError: another run holds the output's lease.
    """
    from ..encode.job import ShardTally

    t0 = time.perf_counter()
    with commit.OutputLease(cfg.output, "sample", cfg.storage_options):
        check_same_run(cfg)
        _remove_stale_temporaries(cfg)
        done = commit.committed(cfg.table, cfg.storage_options)
        chunks = cfg.chunks
        todo = [c for c in chunks if c.name not in done]
        tally = ShardTally(len(todo))
        tally.bar.set_description("chunks")
        outage = None
        try:
            if todo:
                init_ray(ray_address)
                for batch in build_dataset(cfg, todo).iter_batches(batch_size=None, batch_format="pyarrow"):
                    for result in S.ShardResult.from_table(batch):
                        tally.add(result)
        except Exception as e:
            outage = storage_failure(e)
            if outage is None:
                raise
        finally:
            tally.bar.close()
        summary = _summary(cfg, tally, len(chunks) - len(todo), time.perf_counter() - t0)
        if outage is not None:  # committed chunks are safe; say so instead of a traceback
            where = s3_endpoint(None) if not is_local(cfg.output) else cfg.output
            summary["status"] = (f"failed: storage unreachable or failing at {where} ({outage}); "
                                 f"{summary['chunks_skipped'] + summary['chunks_done']} chunks committed; "
                                 "rerun the same command to resume")
            return summary, 1
        summary.update(finish(cfg, chunks))
        if summary["status"] == "ok" and cfg.reference is not None:
            summary["metrics"] = score(cfg, chunks, summary["batch"])
        commit.write_summary(cfg.output, summary, cfg.storage_options)
        return summary, 0


def finish(cfg: SampleJobConfig, chunks: list[Chunk]) -> dict[str, Any]:
    """With every chunk committed: the batch's description and the npz (kept when the chunks are the
    ones it was written from)."""
    records = commit.committed(cfg.table, cfg.storage_options)
    missing = [c.name for c in chunks if c.name not in records]
    if missing:
        return {"status": f"incomplete: {len(missing)} chunk(s) not committed (e.g. {missing[0]}); rerun to finish"}
    tables = [report.read_chunk_table(cfg.table, c, cfg.storage_options) for c in chunks]
    labels = np.concatenate([t.column(S.LABEL).to_numpy() for t in tables]).astype(np.int64)
    batch = report.describe_batch(labels, cfg.num_classes)
    first = report.chunk_images(cfg.output, tables[0].slice(0, 1), cfg.storage_options)
    shape = (len(labels), *first.shape[1:])
    name = report.npz_name(shape[0], shape[1], shape[2])
    source = hashlib.sha256("".join(records[c.name]["sha256"] for c in chunks).encode()).hexdigest()
    previous = _previous_npz(cfg)
    if previous and previous.get("file") == name and previous.get("chunks_sha256") == source \
            and exists(join_url(cfg.output, name), cfg.storage_options):
        npz = previous
    else:
        images = (report.chunk_images(cfg.output, t, cfg.storage_options) for t in tables)
        sha = report.write_adm_npz(join_url(cfg.output, name), images, shape, labels, cfg.storage_options)
        npz = {"file": name, "sha256": sha, "chunks_sha256": source}
        log.info("wrote %s (%d images)", join_url(cfg.output, name), shape[0])
    if not batch["paper_50k"]:
        log.warning("this batch is not the paper's 50k (%s): its FID is not comparable with gFID-50k",
                    batch["not_paper_50k"])
    return {"status": "ok", "batch": batch, "npz": npz}


def score(cfg: SampleJobConfig, chunks: list[Chunk], batch: dict[str, Any]) -> dict[str, Any]:
    """gFID and IS of the committed batch against `cfg.reference` -> metrics.json; returns the metrics."""
    from . import metrics
    moments, scores, measured = metrics.collect(cfg.output, cfg.table, chunks, cfg.features, cfg.storage_options)
    result = metrics.compute_metrics(moments, scores, cfg.features, cfg.reference, batch, cfg.paper_size,
                                     cfg.paper_sampling)
    result.update(generator=cfg.generator_identity["source"], sampling=cfg.sampling, seed=cfg.seed,
                  chunks_measured_on_driver=measured)
    write_json_atomic(join_url(cfg.output, METRICS_FILE), result, cfg.storage_options)
    return result["metrics"]


def _previous_npz(cfg: SampleJobConfig) -> dict[str, Any] | None:
    url = join_url(cfg.output, commit.SUMMARY)
    try:
        return read_json(url, cfg.storage_options).get("npz") if exists(url, cfg.storage_options) else None
    except ValueError:
        return None


def _summary(cfg: SampleJobConfig, tally, skipped: int, wall: float) -> dict[str, Any]:
    st = tally.stats
    model_s = st["generate_s"] + st["decode_s"]  # sampling + de-tokenization: the images/s that matter
    rate = lambda s: round(tally.images / s, 3) if s else None  # noqa: E731
    return {
        "output": cfg.output, "generator": cfg.generator_identity["source"],
        "tokenizer": cfg.tokenizer_identity["source"], "sampling": cfg.sampling, "seed": cfg.seed,
        "chunks_done": tally.done, "chunks_skipped": skipped, "chunks_total": len(cfg.chunks),
        "images": tally.images, "images_total": len(cfg.classes) * cfg.per_class,
        "wall_s": round(wall, 2), "images_per_s": rate(wall),
        # per model actor: sampling and de-tokenization only (no start-up, no PNG writing)
        "per_worker_images_per_s": rate(model_s), "generate_images_per_s": rate(st["generate_s"]),
        "decode_images_per_s": rate(st["decode_s"]), "measure_images_per_s": rate(st["measure_s"]),
        "precision": cfg.precision, "workers": cfg.workers,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One screen for humans."""
    lines = [
        f"status            {summary['status']}",
        f"chunks            {summary['chunks_done']} done, {summary['chunks_skipped']} skipped (already committed), "
        f"{summary['chunks_total']} in the plan",
        f"images            {summary['images']} this run, {summary['images_total']} in the batch",
        f"throughput        {summary['images_per_s']} images/s over {summary['wall_s']} s (with start-up and "
        f"writing); per worker {summary['per_worker_images_per_s']} images/s sampling + de-tokenization",
    ]
    batch = summary.get("batch")
    if batch:
        kind = "the paper's 50k (1000 classes x 50)" if batch["paper_50k"] else f"not the paper's 50k: " \
            f"{batch['not_paper_50k']}"
        lines.append(f"batch             {batch['samples']} images, {batch['classes_sampled']} classes; {kind}")
    if summary.get("npz"):
        lines.append(f"npz               {summary['npz']['file']} (arr_0 uint8 NHWC, arr_1 labels) "
                     f"sha256 {summary['npz']['sha256'][:16]}...")
    if summary.get("metrics"):
        lines += [f"{k:18s}{v:.4f}" for k, v in summary["metrics"].items()]
        lines.append(f"metrics           {METRICS_FILE}: what they are measured against, whether comparable with the paper")
    lines.append(f"output            {summary['output']}  (images/, tokens/, _summary.json)")
    if summary["status"].startswith("failed: storage"):
        lines.append(f"error: {summary['status'].removeprefix('failed: ')}")
    return "\n".join(lines)
