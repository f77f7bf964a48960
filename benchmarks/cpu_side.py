"""The CPU side of the shard jobs, as on a GPU node where the model costs next to nothing.

    python benchmarks/cpu_side.py [--images 6144] [--repeats 3] [--image-format zstd] [--per-shard 256]
                                  [--only-regime]

1. Per stage, ms per image on one thread, for precompute (which stores the base image) and tokenize
   (which does not), on real ImageNet JPEGs (the 250 of the sample, repeated under new keys): read
   (tar members), decode (JPEG -> RGB), resize (the official bicubic), store (encode the base
   image), crop (centre view), to-tensor, table (the shard's Arrow table), commit (its Parquet bytes,
   then data, errors and success record written atomically). The
   irreducible part is decode + resize; the ratio of the whole CPU side to it is printed, and the
   same without to-tensor, which on a GPU node runs on the GPU (the uint8 crop is moved, then converted).
2. The job against a plain PyTorch loop doing the same CPU work with the same cores, the model
   replaced by a free one in both (`TITOK_BENCH_FREE_MODEL`, zeros for codes): the loop is a
   DataLoader with one worker process per CPU, each decoding whole shards with the job's own
   decode function, and the main process running the job's own model and write functions; the job
   is `jobs/precompute_proxy.py` / `jobs/tokenize_dataset.py` with a model actor of 0.1 CPU (a GPU
   actor mostly waits; it also commits each shard, as the loop's main process writes) and decode
   tasks that fit the remaining CPUs. Two image counts give
   the fixed cost and the steady-state images/s of each (`seconds = fixed + images / rate`); the
   steady-state ratio, job / loop, is printed last. One untimed run of each comes first (the first
   job of a Ray session also starts its worker processes), then job and loop alternate at every
   count, `--repeats` times, and the medians are fitted. Shards hold `--per-shard` images (default
   256; `jobs/make_shards.py` writes 1,000 per shard, as ImageNet WebDataset shards usually hold;
   Ray's cost per shard, roughly 0.2-0.25 s of CPU on the 2-core VM across its task, actor call and
   scheduling, shows at small sizes: try `--per-shard 64`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import fit_fixed_and_rate, make_workdir, sample_images, shard_list, timed_job
from jobs.precompute_proxy import main as precompute
from jobs.tokenize_dataset import main as tokenize
from pipelines import schema as S
from pipelines.commit import commit_shard
from pipelines.encode.decode import DecodeOptions, decode_shard
from pipelines.encode.model import FREE_MODEL_ENV, EncodeViews
from pipelines.encode.write import shard_table, write_shard
from pipelines.preprocess import (
    CENTER,
    apply_view,
    encode_stored_image,
    open_checked,
    resize_shorter_side,
    to_model_input,
    to_rgb,
    view_specs,
)
from pipelines.tar_reader import Sample, iter_samples
from titok_core import PRESETS, VQGAN_PRESETS, MaskGITVQGAN, TiTok, save_pretrained

PER_SHARD = 256


def ms(seconds: float, n: int) -> float:
    return seconds / n * 1e3


def stage_costs(work: Path, image_format: str, repeats: int) -> dict[str, float]:
    """Median ms per image of each CPU stage, one thread."""
    shards = sorted((work / "shards").glob("*.tar"))
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        t = dict.fromkeys(["read", "decode", "resize", "store", "crop", "to-tensor", "table", "commit"], 0.0)
        n = 0
        for shard in shards:
            t0 = time.perf_counter()
            samples = [s for s in iter_samples(str(shard), num_classes=None) if isinstance(s, Sample)]
            t["read"] += time.perf_counter() - t0
            decoded = S.DecodedShard(str(shard), shard.stem)
            crops = []
            for sample in samples:
                t0 = time.perf_counter()
                image = open_checked(sample.image, max_pixels=50_000_000, max_aspect_ratio=10)
                image.load()
                rgb = to_rgb(image)
                t1 = time.perf_counter()
                base = np.array(resize_shorter_side(rgb, 256))
                t2 = time.perf_counter()
                stored, pixels = encode_stored_image(base, image_format)
                t3 = time.perf_counter()
                crop = apply_view(pixels, CENTER)
                t4 = time.perf_counter()
                to_model_input(crop[None])
                t5 = time.perf_counter()
                t["decode"] += t1 - t0
                t["resize"] += t2 - t1
                t["store"] += t3 - t2
                t["crop"] += t4 - t3
                t["to-tensor"] += t5 - t4
                decoded.add(sample.key, sample.label, sample.shard, sample.member, stored, pixels)
                crops.append(crop)
            meta = S.DatasetMetadata("center", tuple(view_specs("center")), 256, 256, image_format,
                                     teacher=S.ModelIdentity("MaskGITVQGAN", {}, "0" * 64, "x"), proxy_codebook_size=1024)
            encoded = S.EncodedShard.from_decoded(decoded, np.zeros((len(decoded), 1, 256), np.uint16),
                                                  np.zeros((len(decoded), 1), np.int32), [False], {})
            t0 = time.perf_counter()
            table = shard_table(encoded, meta)
            t1 = time.perf_counter()
            commit_shard(str(work / "stage-out"), shard.stem, str(shard), table, [], {}, None)
            t2 = time.perf_counter()
            t["table"] += t1 - t0
            t["commit"] += t2 - t1  # Parquet bytes + data, errors and success record written atomically
            n += len(samples)
        for k, v in t.items():
            runs.setdefault(k, []).append(ms(v, n))
    shutil.rmtree(work / "stage-out", ignore_errors=True)
    return {k: statistics.median(v) for k, v in runs.items()}


def stage_costs_report(work: Path, image_format: str, n: int) -> None:
    costs = stage_costs(work, image_format, 1)
    irreducible = costs["decode"] + costs["resize"]
    print(f"1. CPU stages, ms per image, one thread, {n} real ImageNet JPEGs, base images stored as "
          f"{image_format}")
    print(f"   {'stage':10s} {'precompute':>10s} {'tokenize':>9s}")
    for stage, v in costs.items():
        print(f"   {stage:10s} {v:10.2f} {0.0 if stage == 'store' else v:9.2f}")
    pre = sum(costs.values())
    tok = pre - costs["store"]
    print(f"   {'total':10s} {pre:10.2f} {tok:9.2f}")
    print(f"   whole CPU side / irreducible decode + resize ({irreducible:.2f} ms): precompute {pre / irreducible:.2f}x, "
          f"tokenize {tok / irreducible:.2f}x")
    # On a GPU node the uint8 crop goes to the device and becomes float there (preprocess.to_model_input
    # moves before it converts), so to-tensor leaves the CPU side.
    gpu_pre, gpu_tok = pre - costs["to-tensor"], tok - costs["to-tensor"]
    print(f"   on a GPU node (to-tensor runs on the GPU): precompute {gpu_pre / irreducible:.2f}x, "
          f"tokenize {gpu_tok / irreducible:.2f}x\n")


class ShardRows(torch.utils.data.Dataset):
    """The loop's input: one item per shard, decoded by the job's own decode function."""

    def __init__(self, shards: list[str], opts: DecodeOptions):
        self.shards, self.opts = shards, opts

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> S.DecodedShard:
        return decode_shard(self.shards[i], Path(self.shards[i]).stem, self.opts)


def plain_loop(shards: list[str], out: Path, model_dir: str, image_format: str | None, cpus: int) -> float:
    """DataLoader with a worker per CPU decoding shards; the main process encodes (free) and writes."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    keep = image_format is not None
    opts = DecodeOptions(image_format=image_format or "none", num_classes=None)
    model = EncodeViews(model_dir, "--model", "center", 256, 32, 256 if keep else 32)
    meta = S.DatasetMetadata("center", tuple(view_specs("center")), 256, 256 if keep else 32, image_format,
                             teacher=S.ModelIdentity("MaskGITVQGAN", {}, "0" * 64, "x") if keep else None,
                             tokenizer=None if keep else S.ModelIdentity("TiTok", {}, "0" * 64, "x"),
                             proxy_codebook_size=1024 if keep else None, codebook_size=None if keep else 256)
    loader = torch.utils.data.DataLoader(ShardRows(shards, opts), batch_size=None, num_workers=cpus)
    for shard in loader:
        write_shard(model.encode_shard(shard), str(out), meta)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6144,
                    help="a multiple of 3 x --per-shard (two counts: a third and all; the model actor's start-up, ~5 CPU-s, overlaps the decoding of the first ~1,000 images, so smaller counts do not reach the steady state)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-shard", type=int, default=PER_SHARD, help="images per input shard")
    ap.add_argument("--only-regime", action="store_true", help="skip part 1 (the per-stage costs)")
    ap.add_argument("--image-format", choices=("zstd", "png", "jpeg"), default="zstd")
    args = ap.parse_args()
    import ray
    images = sample_images(args.images)
    per_shard = args.per_shard
    work = make_workdir(images, per_shard)
    torch.manual_seed(0)
    save_pretrained(MaskGITVQGAN(VQGAN_PRESETS["debug"]), work / "teacher")  # never run: the model is free
    save_pretrained(TiTok(PRESETS["debug"]), work / "tokenizer")
    cpus = os.cpu_count() or 2

    torch.set_num_threads(1)
    if not args.only_regime:
        stage_costs_report(work, args.image_format, len(images))

    os.environ[FREE_MODEL_ENV] = "1"  # inherited by the job's Ray workers
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, num_cpus=cpus)
    counts = [args.images // 3, args.images]
    compute = ["--workers", "1", "--cpus-per-worker", "0.1", "--decode-cpus", str(round((cpus - 0.1) / cpus, 2)),
               "--num-classes", "100000", "--batch-size", "32"]
    results = {}
    try:
        for name, job, model, fmt in (("precompute", precompute, ["--teacher", str(work / "teacher")], args.image_format),
                                      ("tokenize", tokenize, ["--tokenizer", str(work / "tokenizer")], None)):
            extra = ["--image-format", fmt] if fmt else []

            def run_job(n: int) -> float:
                argv = ["--input", shard_list(work, n // per_shard), *model, "--views", "center", *compute, *extra]
                return timed_job(job, argv, work / "out")

            def run_loop(n: int) -> float:
                shards = sorted(str(p) for p in (work / "shards").glob("*.tar"))[: n // per_shard]
                return plain_loop(shards, work / "loop-out", model[1], fmt, cpus)

            run_job(counts[0])  # warm-up, not timed: the first job of a session also starts Ray's workers
            run_loop(counts[0])
            job_s: dict[int, list[float]] = {n: [] for n in counts}
            loop_s: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both alike
                for n in counts:
                    job_s[n].append(run_job(n))
                    loop_s[n].append(run_loop(n))
                    print(f"   {name} {n} images: job {job_s[n][-1]:.2f} s, loop {loop_s[n][-1]:.2f} s", flush=True)
            job_med = [statistics.median(job_s[n]) for n in counts]
            loop_med = [statistics.median(loop_s[n]) for n in counts]
            results[name] = (fit_fixed_and_rate(counts, job_med), fit_fixed_and_rate(counts, loop_med))
    finally:
        ray.shutdown()
    print(f"2. The GPU regime, simulated (free model), {cpus} CPUs, {per_shard} images per shard, counts {counts}, medians of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, ((jf, jr), (lf, lr)) in results.items():
        print(f"   {name:10s} loop: fixed {lf:4.1f} s, {lr:6.1f} img/s   job: fixed {jf:4.1f} s, {jr:6.1f} img/s   "
              f"job / loop {jr / lr:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
