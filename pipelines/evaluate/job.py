"""The evaluation job behind jobs/evaluate_tokenizer.py: shards -> reconstructions -> metrics.

It rides the shard jobs' machinery (`pipelines.encode.job`): the same planning (committed shards are
skipped), decoding and quarantine, resources, progress bar and summary, and the same exactly-once
commits, with its own model and write stages:

    from_items(shards not yet committed)
      -> decode_shards             CPU tasks: read tar / proxy Parquet, quarantine, resize (shared)
      -> MeasureReconstructions    actor pool: centre crop, encode -> decode, uint8, PSNR / SSIM /
         + commit                  LPIPS, feature moments, token histogram, grid candidates; then, in
                                   the same actor beside the next shard (write_evaluated_shards):
                                   per-image Parquet + _stats/ + _grids/, then the success record
      -> driver                    merge every committed shard (also skipped ones), compute FID once,
                                   metrics.json, metrics.md, worst.png / best.png

    <output>/metrics.json, metrics.md, worst.png, best.png     the report
    <output>/per_image/                                         the shard job's output: <shard>.parquet
                                                                per image, _stats/, _grids/, _errors/,
                                                                _success/, _summary.json
The per-image rows get a directory of their own so that it opens as one dataset
(`pd.read_parquet(<output>/per_image)`), which files of other kinds beside them would break.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .. import commit
from ..encode.job import EncodeJobConfig, Stage
from ..encode.job import run as run_shards
from ..runtime import load_lpips, vgg16_weights
from ..storage import atomic_write_bytes, expand_inputs, join_url
from . import report
from .features import FeatureSpec, file_sha256
from .measure import MeasureReconstructions
from .protocol import PROTOCOL
from .write import write_evaluated_shards

log = logging.getLogger("titok.evaluate")
PER_IMAGE_DIR = "per_image"


def per_image_output(output: str) -> str:
    """Where an evaluation's per-image dataset (the shard job's output, with its commits) goes."""
    return join_url(output, PER_IMAGE_DIR)


@dataclass(frozen=True)
class EvaluateJobConfig:
    """One evaluation run.

    Args:
        output: the evaluation's directory (local or URL): the report, and `per_image_output(output)`.
        shards: the shard job underneath: input, its output (`per_image_output(output)`), decoding,
            resources, the tokenizer's URI, and the metadata naming the tokenizer (views: the centre
            crop; codes per view: its tokens).
        features: the FID feature network.
        lpips: measure LPIPS-VGG; lpips_weights: its VGG16 weights URI (None: torch's hub cache);
            lpips_sha256: their hash (the identity a resumed run must match).
        reference: saved real-image statistics to score against (None: the same crops, in this run).
        save_reference: where to write this run's real-image statistics (local path or URL).
        grid_rows: rows of worst.png / best.png.
    """

    output: str
    shards: EncodeJobConfig
    features: FeatureSpec
    lpips: bool = True
    lpips_weights: str | None = None
    lpips_sha256: str | None = None
    reference: report.Reference | None = None
    save_reference: str | None = None
    grid_rows: int = 8

    def __post_init__(self) -> None:
        assert self.shards.output == per_image_output(self.output), "the shards go to <output>/per_image"
        if self.reference is not None and self.save_reference:
            raise ValueError("--save-reference-stats saves the statistics this run measures, and with "
                             "--reference-stats it measures none: use one of them")
        if self.grid_rows < 1:
            raise ValueError(f"--grid-rows {self.grid_rows} must be >= 1")

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.shards.dataset.to_dict()["tokenizer" if self.shards.dataset.tokenizer else "teacher"]

    def fingerprint(self) -> dict[str, Any]:
        """What every committed shard of one evaluation shares; a rerun must match it to reuse them."""
        return {"protocol": PROTOCOL["name"], "resolution": self.shards.dataset.crop_size,
                "tokenizer_sha256": self.tokenizer["weights_sha256"], "features": self.features.identity(),
                "lpips": self.lpips_sha256 if self.lpips else None, "precision": self.shards.precision,
                "real_features": self.reference is None}


def lpips_weights_sha256(uri: str | None) -> str:
    """Resolve LPIPS's VGG16 weights as the workers will (path, URL, s3://, torch's hub cache, a download),
    refuse a file that is neither VGG16 nor LPIPS, and return its hash. Offline without them: one line
    naming --lpips-weights, the cache and --no-lpips."""
    try:
        path = vgg16_weights(uri)
        load_lpips(path)
    except RuntimeError as e:
        raise RuntimeError(f"{e}; or measure no LPIPS with --no-lpips") from None
    return file_sha256(path)


def input_names(cfg: EvaluateJobConfig) -> list[str]:
    s = cfg.shards
    return commit.unique_names(expand_inputs(s.input, s.storage_options, suffix=s.input_suffix))


def check_output(cfg: EvaluateJobConfig) -> None:
    """Before Ray starts: refuse (one line) an --input that names no shards, and an --output whose
    committed shards come from another evaluation."""
    input_names(cfg)
    if cfg.shards.overwrite:
        return
    mine = cfg.fingerprint()
    for name, record in sorted(commit.committed(cfg.shards.output, cfg.shards.storage_options).items()):
        theirs = record.get("evaluation")
        if theirs != mine:
            what = ("not an evaluation" if theirs is None else
                    "another " + ", ".join(k for k in mine if theirs.get(k) != mine[k]).replace("_", " "))
            raise ValueError(f"--output {cfg.output} already holds shard {name} of {what}: "
                             "use another --output, or --overwrite to redo every shard")


def stages(cfg: EvaluateJobConfig) -> tuple[Stage, Stage]:
    s, meta = cfg.shards, cfg.shards.dataset
    codebook = meta.codebook_size if meta.tokenizer else meta.proxy_codebook_size
    measure = Stage(MeasureReconstructions, dict(
        model_uri=s.model, option=s.model_option, crop=meta.crop_size, batch_size=s.batch_size,
        precision=s.precision, threads=s.threads, features=cfg.features, real_features=cfg.reference is None,
        lpips=cfg.lpips, lpips_weights=cfg.lpips_weights, grid_rows=cfg.grid_rows, codebook_size=codebook))
    write = Stage(write_evaluated_shards, dict(output=s.output, tokens_per_image=meta.codes_per_view,
                                              fingerprint=cfg.fingerprint(), storage_options=s.storage_options))
    return measure, write


def run(cfg: EvaluateJobConfig, ray_address: str | None = None) -> tuple[dict[str, Any], dict[str, Any] | None, int]:
    """Run the evaluation: (shard-job summary, the result written to metrics.json or None, exit code)."""
    summary, code = run_shards(cfg.shards, ray_address, stages=stages(cfg))
    s = cfg.shards
    done = commit.committed(s.output, s.storage_options)
    names = [n for n in input_names(cfg) if n in done]
    if not names:
        return summary, None, code
    collected = report.collect(s.output, names, s.storage_options)
    result = {
        "status": summary["status"],
        **report.compute_metrics(collected, cfg.features, cfg.tokenizer, cfg.reference),
        "quarantined": summary["errors_total"],
        "shards": {"committed": len(names), "failed": summary["shards_failed"]},
        "tokenizer": cfg.tokenizer,
        "protocol": PROTOCOL,
        "features": {**cfg.features.identity(), "source": cfg.features.weights},
        "lpips": ({"network": "LPIPS-VGG (lpips package)", "backbone_sha256": cfg.lpips_sha256,
                   "source": cfg.lpips_weights} if cfg.lpips else None),
        "precision": s.precision, "batch_size": s.batch_size,
        "input": s.input, "output": cfg.output, "per_image": s.output,
    }
    report.write_outputs(cfg.output, result, collected, cfg.grid_rows, s.storage_options)
    if cfg.save_reference and collected.stats is not None and collected.stats.real is not None:
        atomic_write_bytes(cfg.save_reference, report.reference_bytes(collected.stats.real, cfg.features),
                           s.storage_options)
        log.info("reference statistics of %d images written to %s", collected.stats.real.n, cfg.save_reference)
    return summary, result, code
