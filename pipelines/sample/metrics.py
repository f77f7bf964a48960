"""gFID and Inception Score of a sampling run, with the evaluation job's FID code (pipelines.evaluate).

    measure          uint8 images -> feature-network features and classifier logits (float64); the model
                     actors run it on each batch they decode, the driver on committed PNGs it must
                     measure itself (chunks sampled before --reference-stats was given)
    chunk stats      `<output>/tokens/_stats/<chunk>.npz`: every image's features and logits and the
                     feature network's identity, committed with its chunk (per image rather than as
                     moments: 200 images x 2048 features take 3.3 MB, 2048-d moments 16.8 MB)
    compute_metrics  every chunk's statistics in plan order -> FeatureMoments (titok_core.metrics) ->
                     Frechet distance against the reference (pipelines.evaluate.features), and the
                     Inception Score as the ADM evaluator computes it (splits of 5,000 in batch order)

The numbers depend neither on the number of workers nor on when a chunk was measured: the images
are the same bytes, and the statistics are summed in plan order.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
import torch

from titok_core.metrics import ADM_IS_SPLIT, FeatureMoments, InceptionScore

from ..evaluate.features import FeatureSpec, build_feature_net, frechet_distance
from ..evaluate.report import Reference
from ..storage import atomic_write_bytes, exists, join_url, read_bytes
from . import report
from .plan import Chunk, stats_path

log = logging.getLogger("titok.sample")

# gFID of the paper's generators (TiTok paper, ImageNet 256x256, 50k samples, ADM evaluator).
PAPER_GFID = {"L-32": 2.77, "B-64": 2.48, "S-128": 1.97}


@torch.no_grad()
def measure(net: torch.nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
            batch_size: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """images: (n, H, W, 3) uint8 -> (features (n, D), logits (n, K)), both float64."""
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device).permute(0, 3, 1, 2)
        f = net(x)
        feats.append(f.double().cpu().numpy())
        logits.append(net.logits(f).double().cpu().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def stats_bytes(features: np.ndarray, logits: np.ndarray, spec: FeatureSpec) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, features=features.astype(np.float64), logits=logits.astype(np.float64),
             network=np.array(json.dumps(spec.identity(), sort_keys=True)))
    return buf.getvalue()


def read_stats(table: str, chunk: Chunk, spec: FeatureSpec,
               storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """A chunk's (features, logits) if its statistics file exists and was measured with `spec`'s network."""
    url = join_url(table, *stats_path(chunk.name).split("/"))
    if not exists(url, storage_options):
        return None
    with np.load(io.BytesIO(read_bytes(url, storage_options)), allow_pickle=False) as z:
        if json.loads(str(z["network"])) != spec.identity() or len(z["features"]) != len(chunk):
            return None
        return z["features"], z["logits"]


def collect(output: str, table: str, chunks: list[Chunk], spec: FeatureSpec,
            storage_options: dict | None = None) -> tuple[FeatureMoments, InceptionScore, int]:
    """Every chunk's statistics in plan order (measuring on the driver, from the committed PNGs, the
    chunks that have none for this network, and saving them); returns (moments, IS sums, chunks
    measured here)."""
    moments, scores = FeatureMoments.zeros(spec.dim), InceptionScore(ADM_IS_SPLIT)
    net, measured = None, 0
    for chunk in chunks:
        stats = read_stats(table, chunk, spec, storage_options)
        if stats is None:
            if net is None:
                log.info("measuring committed samples without statistics for this feature network on the driver")
                net = build_feature_net(spec)
            images = report.chunk_images(output, report.read_chunk_table(table, chunk, storage_options), storage_options)
            stats = measure(net, images)
            atomic_write_bytes(join_url(table, *stats_path(chunk.name).split("/")), stats_bytes(*stats, spec),
                               storage_options)
            measured += 1
        moments.update(torch.from_numpy(stats[0]))
        scores.update(torch.from_numpy(stats[1]))
    return moments, scores, measured


def compute_metrics(moments: FeatureMoments, scores: InceptionScore, spec: FeatureSpec, reference: Reference,
                    batch: dict[str, Any], paper_size: str | None, paper_sampling: bool) -> dict[str, Any]:
    """metrics.json: gFID and IS (named for what the feature network is), and what limits the comparison.

    Args:
        batch: `report.describe_batch` of the samples.
        paper_size: the paper generator size the generator's architecture equals (None: another).
        paper_sampling: the sampling settings are the paper's preset for that size.
    """
    mu, sigma = moments.mean_and_covariance()
    fid = frechet_distance(reference.mu, reference.sigma, mu, sigma)
    is_mean, is_std = scores.compute()
    official = spec.is_rfid and spec.identity()["official_weights"]
    notes = []
    if not spec.is_rfid:
        notes.append("random smoke-test feature network (--random-features): these are not gFID and IS")
    elif not official:
        notes.append("the Inception weights are not the standard pt_inception-2015-12-05-6726825d.pth: not comparable")
    if not batch["paper_50k"]:
        notes.append(f"not the paper's 50k batch ({batch['not_paper_50k']}): FID is biased upward on fewer "
                     "images and shifts with the class balance")
    if not reference.adm:
        notes.append("the reference is statistics saved by the evaluation job, not the ADM reference batch "
                     "(VIRTUAL_imagenet256_labeled.npz) the paper's gFID uses: another number")
    if paper_size is None:
        notes.append("the generator is none of the paper's sizes (L-32, B-64, S-128)")
    elif not paper_sampling:
        notes.append(f"sampling settings differ from the paper's {paper_size} preset")
    if spec.is_rfid:
        notes.append("features by torch-fidelity's port of the ADM evaluator's TensorFlow Inception: close to, "
                     "not bit-equal with, the ADM evaluator's numbers")
    paper = {"model": f"TiTok-{paper_size} generator", "gfid": PAPER_GFID[paper_size]} if paper_size else None
    fid_key, is_key = ("gfid", "inception_score") if spec.is_rfid else ("fid_random_features", "is_random_features")
    return {
        "metrics": {fid_key: fid, is_key: is_mean, f"{is_key}_std": is_std},
        "images": moments.n,
        "inception_score_splits": {"split_size": scores.split_size, "splits": len(scores.splits),
                                   "order": "the npz's (class order)"},
        "features": spec.identity(),
        "reference": {"kind": "ADM reference batch (mu, sigma)" if reference.adm else "saved evaluation statistics",
                      "source": reference.source, "images": reference.n},
        "batch": batch,
        "paper": paper,
        "comparable_with_paper": bool(official and batch["paper_50k"] and reference.adm and paper and paper_sampling),
        "notes": notes,
    }


def format_metrics(result: dict[str, Any]) -> list[str]:
    """Console lines."""
    m = result["metrics"]
    if "gfid" in m:
        paper = result["paper"]
        lines = [f"gFID              {m['gfid']:.4f}" + (f"   (paper, {paper['model']}: {paper['gfid']})" if paper else ""),
                 f"Inception Score   {m['inception_score']:.3f} +- {m['inception_score_std']:.3f}"]
    else:
        lines = [f"FID (random)      {m['fid_random_features']:.4f}   (smoke-test features: not gFID)",
                 f"IS (random)       {m['is_random_features']:.4f}"]
    return lines + [f"note              {n}" for n in result["notes"]]
