"""Driver side of the evaluation: from the committed shards to the reported numbers.

    collect             every committed shard of the input (also those a rerun skipped): statistics
                        merged in shard-name order, per-image rows sorted by key, grid candidates
    compute_metrics     rFID (or the smoke-test FID), PSNR, SSIM, LPIPS, codebook usage / perplexity,
                        per-class means, and whether the numbers are comparable with the paper's
    write_outputs       metrics.json, metrics.md, worst.png, best.png (and the reference statistics)
    Reference           saved real-image statistics (--save-reference-stats / --reference-stats)

Means are exact sums (math.fsum) over rows sorted by key and the statistics are merged in name
order, so nothing depends on the number of workers, the order shards finish or a resume.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from titok_core.metrics import FeatureMoments, codebook_stats

from .. import schema as S
from ..commit import data_url
from ..storage import atomic_write_bytes, get_fs, join_url, read_bytes, write_json_atomic
from . import grids
from .features import FeatureSpec, frechet_distance
from .protocol import PAPER_IMAGES, PAPER_RFID, PROTOCOL, RESOLUTION, paper_model
from .stats import ShardStats

STATS_DIR = "_stats"
GRIDS_DIR = "_grids"


# --------------------------------------------------------------------------------------------
# Reference statistics


@dataclass(frozen=True)
class Reference:
    """Real-image statistics saved by an earlier evaluation of the same split.

    Args:
        mu / sigma: (D,) and (D, D) float64. n: images (None: an ADM reference batch, which does not
            say). source: where they were read from. adm: an ADM reference batch's `mu` / `sigma`
            (the generation reference of gFID, e.g. VIRTUAL_imagenet256_labeled.npz), not ours.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    source: str
    adm: bool = False


def reference_bytes(real: FeatureMoments, features: FeatureSpec) -> bytes:
    """The npz `--save-reference-stats` writes: mu, sigma, n, the protocol and the feature network."""
    mu, sigma = real.mean_and_covariance()
    buf = io.BytesIO()
    np.savez(buf, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(), n=np.array(real.n, np.int64),
             protocol=np.array(json.dumps(PROTOCOL, sort_keys=True)),
             features=np.array(json.dumps(features.identity(), sort_keys=True)))
    return buf.getvalue()


def _read_arrays(uri: str, storage_options: dict | None) -> dict[str, np.ndarray]:
    """The statistics arrays of an npz; image arrays (`arr_0`, ... of an ADM reference batch: about
    1 GB of images beside its mu / sigma) are neither read nor returned."""
    try:
        fs, path = get_fs(uri, storage_options=storage_options)
        with fs.open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith("arr_")}
    except FileNotFoundError:
        raise FileNotFoundError(f"--reference-stats {uri} does not exist") from None
    except Exception as e:
        raise ValueError(f"--reference-stats {uri} is not an .npz of statistics ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return arrays


def load_reference(uri: str, features: FeatureSpec, storage_options: dict | None = None) -> Reference:
    """Read and check saved statistics: same protocol, same feature network (one-line ValueError otherwise)."""
    arrays = _read_arrays(uri, storage_options)
    if "protocol" not in arrays or "features" not in arrays:
        raise ValueError(f"--reference-stats {uri} records no protocol, so it was not written by --save-reference-stats; "
                         "rFID's reference is the statistics of the same centre crops (the ADM generation reference "
                         "batch inflates rFID about 2x): save them once with --save-reference-stats")
    if json.loads(str(arrays["protocol"])) != PROTOCOL:
        raise ValueError(f"--reference-stats {uri} was computed with another evaluation protocol "
                         f"({json.loads(str(arrays['protocol'])).get('name')!r}, this job: {PROTOCOL['name']!r})")
    theirs, ours = json.loads(str(arrays["features"])), features.identity()
    if theirs != ours:
        raise ValueError(f"--reference-stats {uri} was computed with another feature network ({theirs.get('network')}, "
                         f"weights {str(theirs.get('weights_sha256'))[:12]}; this run: {ours.get('network')}, "
                         f"weights {str(ours.get('weights_sha256'))[:12]})")
    return Reference(arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64), int(arrays["n"]), uri)


def load_generation_reference(uri: str, features: FeatureSpec, storage_options: dict | None = None) -> Reference:
    """The reference of gFID: statistics saved by --save-reference-stats (checked as `load_reference`
    checks them), or an ADM reference batch's `mu` / `sigma` (Inception pool features of the ADM
    evaluator; usable only when this run measures with Inception). One-line ValueError otherwise."""
    arrays = _read_arrays(uri, storage_options)
    if "protocol" in arrays or "features" in arrays:
        return load_reference(uri, features, storage_options)
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError(f"--reference-stats {uri} holds neither our statistics (--save-reference-stats) nor an ADM "
                         f"reference batch's mu / sigma (it has {', '.join(sorted(arrays)) or 'no arrays'})")
    if not features.is_rfid:
        raise ValueError(f"--reference-stats {uri} is an ADM reference batch (Inception statistics) and this run "
                         f"measures with another feature network ({features.identity()['network']}): drop "
                         "--random-features")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.shape != (features.dim,) or sigma.shape != (features.dim, features.dim):
        raise ValueError(f"--reference-stats {uri}: mu {mu.shape} / sigma {sigma.shape} are not statistics of "
                         f"{features.dim}-d Inception pool features")
    return Reference(mu, sigma, None, uri, adm=True)


# --------------------------------------------------------------------------------------------
# Collecting the committed shards


@dataclass
class Collected:
    """What the committed shards hold, in a deterministic order."""

    names: list[str]
    stats: ShardStats | None
    keys: list[str]
    labels: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    lpips: np.ndarray  # NaN where not measured
    candidates: list[pa.Table]


def collect(output: str, names: list[str], storage_options: dict | None = None) -> Collected:
    """Read the statistics, per-image rows and grid candidates of the committed shards `names`."""
    names = sorted(names)
    stats: ShardStats | None = None
    tables, cands = [], []
    for name in names:  # a running sum: 50 shards' 2048-d moments would hold 3 GB at once
        shard = ShardStats.from_bytes(read_bytes(join_url(output, STATS_DIR, f"{name}.npz"), storage_options))
        stats = shard if stats is None else stats + shard
        tables.append(pq.read_table(pa.BufferReader(read_bytes(data_url(output, name), storage_options)),
                                    columns=[S.KEY, S.LABEL, S.PSNR, S.SSIM, S.LPIPS]))
        cands.append(pq.read_table(pa.BufferReader(read_bytes(join_url(output, GRIDS_DIR, f"{name}.parquet"),
                                                              storage_options))))
    table = pa.concat_tables(tables) if tables else pa.table({k: [] for k in (S.KEY, S.LABEL, S.PSNR, S.SSIM, S.LPIPS)})
    order = np.argsort(np.asarray(table.column(S.KEY).to_pylist(), dtype=object), kind="stable")
    col = lambda name: table.column(name).to_numpy(zero_copy_only=False)[order]  # noqa: E731
    lpips = np.asarray([np.nan if v is None else v for v in col(S.LPIPS)], np.float64)
    return Collected(names, stats, list(col(S.KEY)), col(S.LABEL).astype(np.int64),
                     col(S.PSNR).astype(np.float64), col(S.SSIM).astype(np.float64), lpips, cands)


# --------------------------------------------------------------------------------------------
# Metrics


def _mean(values: np.ndarray) -> float | None:
    return math.fsum(values.tolist()) / len(values) if len(values) and not np.isnan(values).any() else None


def compute_metrics(c: Collected, features: FeatureSpec, tokenizer: dict[str, Any],
                    reference: Reference | None = None) -> dict[str, Any]:
    """Every number of the evaluation, plus what a reader needs to judge it (see `write_outputs`)."""
    n = len(c.keys)
    notes: list[str] = []
    fid = None
    if c.stats is not None and c.stats.fake.n >= 2:
        mu_f, sigma_f = c.stats.fake.mean_and_covariance()
        if reference is not None:
            mu_r, sigma_r = reference.mu, reference.sigma
        else:
            mu_r, sigma_r = c.stats.real.mean_and_covariance()
        fid = frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    else:
        notes.append("FID needs at least 2 images")
    usage, perplexity = codebook_stats(torch.from_numpy(c.stats.token_counts)) if c.stats else (0.0, 0.0)
    paper = paper_model(tokenizer["kind"], tokenizer["config"])
    ref_n = reference.n if reference is not None else n
    if not features.is_rfid:
        notes.append("the FID is from a random smoke-test feature network (--random-features): it is not rFID")
    elif not features.identity()["official_weights"]:
        notes.append("the Inception weights are not the standard pt_inception-2015-12-05-6726825d.pth: not comparable")
    if min(n, ref_n) < PAPER_IMAGES:
        notes.append(f"rFID over {min(n, ref_n):,} images is not comparable with the paper's, which uses all "
                     f"{PAPER_IMAGES:,} ImageNet-1k validation images (FID is biased upward on fewer images)")
    if reference is not None and reference.n != n:
        notes.append(f"the reference statistics hold {reference.n:,} images, this run {n:,}: not the same image set")
    if paper is None:
        notes.append("no paper model of this size (the paper reports L-32, B-64, S-128 and the teacher)")
    metrics = {  # full precision: equal inputs give equal numbers, whatever the workers or the shard order
        ("rfid" if features.is_rfid else "fid_random_features"): fid,
        "psnr": _mean(c.psnr), "ssim": _mean(c.ssim), "lpips": _mean(c.lpips),
        "codebook_usage": usage, "codebook_perplexity": perplexity,
        "codebook_size": int(len(c.stats.token_counts)) if c.stats else None,
    }
    per_class: dict[str, dict[str, Any]] = {}
    groups: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(c.labels.tolist()):
        groups[label].append(i)
    for label in sorted(groups):
        idx = np.asarray(groups[label])
        per_class[str(label)] = {"images": len(idx), "psnr": _mean(c.psnr[idx]), "ssim": _mean(c.ssim[idx]),
                                 "lpips": _mean(c.lpips[idx])}
    comparable = features.is_rfid and features.identity()["official_weights"] and min(n, ref_n) >= PAPER_IMAGES \
        and paper is not None and (reference is None or reference.n == n)
    return {
        "metrics": metrics,
        "images": n,
        "paper": {"model": paper, "rfid": PAPER_RFID[paper]} if paper else None,
        "comparable_with_paper": bool(comparable),
        "notes": notes,
        "per_class": per_class,
        "reference": ({"kind": "saved statistics", "source": reference.source, "images": reference.n}
                      if reference is not None else {"kind": "the same centre crops, measured in this run", "images": n}),
    }


# --------------------------------------------------------------------------------------------
# Outputs


def markdown(result: dict[str, Any]) -> str:
    """metrics.md: our numbers beside the paper's for the same model size, and what limits the comparison."""
    m, paper = result["metrics"], result["paper"]
    tok = result["tokenizer"]
    fid_key = "rfid" if "rfid" in m else "fid_random_features"
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    paper_col = f"paper, {paper['model']}" if paper else "paper (no model of this size)"
    lines = [
        f"# Reconstruction quality: {tok['kind']}" + (f", {paper['model']} size" if paper else "") + f" ({tok['source']})",
        "",
        f"{result['images']:,} images, {result['quarantined']:,} quarantined; {RESOLUTION}x{RESOLUTION} centre crops "
        f"(the official eval transform); rFID reference: {result['reference']['kind']}. Status: {result['status']}.",
        "",
        f"| metric | ours | {paper_col} |",
        "|---|---|---|",
        f"| {'rFID' if fid_key == 'rfid' else 'FID (random features, not rFID)'} | {fmt(m[fid_key], 3)} | "
        f"{fmt(paper['rfid'], 2) if paper else '-'} |",
        f"| PSNR (dB) | {fmt(m['psnr'], 3)} | - |",
        f"| SSIM | {fmt(m['ssim'], 4)} | - |",
        f"| LPIPS (VGG) | {fmt(m['lpips'], 4)} | - |",
        f"| codebook usage | {fmt(m['codebook_usage'], 4)} of {m['codebook_size']} | - |",
        f"| codebook perplexity | {fmt(m['codebook_perplexity'], 1)} | - |",
        "",
        "Comparable with the paper: " + ("yes." if result["comparable_with_paper"] else "**no**."),
    ]
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", "worst.png / best.png: input | reconstruction, ranked by "
              + ("LPIPS." if m["lpips"] is not None else "PSNR (no LPIPS measured).")]
    return "\n".join(lines) + "\n"


def write_outputs(output: str, result: dict[str, Any], collected: Collected, grid_rows: int,
                  storage_options: dict | None = None) -> None:
    """metrics.json, metrics.md and the worst / best grids, each written atomically."""
    write_json_atomic(join_url(output, "metrics.json"), result, storage_options)
    atomic_write_bytes(join_url(output, "metrics.md"), markdown(result).encode(), storage_options)
    picked = grids.pick(collected.candidates, grid_rows)
    for side in ("worst", "best"):
        if picked[side]:
            atomic_write_bytes(join_url(output, f"{side}.png"), grids.grid_png(picked[side]), storage_options)


def format_metrics(result: dict[str, Any]) -> str:
    """A few lines for the console."""
    m = result["metrics"]
    fid_key = "rfid" if "rfid" in m else "fid_random_features"
    paper = result["paper"]
    num = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"{'rFID' if fid_key == 'rfid' else 'FID (random features)':18s}{num(m[fid_key], 4)}"
             + (f"   (paper, {paper['model']}: {paper['rfid']})" if paper else ""),
             f"{'PSNR / SSIM':18s}{num(m['psnr'], 3)} dB / {num(m['ssim'], 4)}",
             f"{'LPIPS':18s}{num(m['lpips'], 4) if m['lpips'] is not None else 'not measured'}",
             f"{'codebook':18s}usage {num(m['codebook_usage'], 4)} of {m['codebook_size']}, "
             f"perplexity {num(m['codebook_perplexity'], 1)}"]
    lines += [f"{'note':18s}{note}" for note in result["notes"]]
    return "\n".join(lines)
