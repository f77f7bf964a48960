"""The proxy-code job (Ray Data) vs a plain single-process PyTorch loop, same images, same teacher.

    python benchmarks/precompute.py [--counts 16 32 48] [--repeats 3] [--precision fp32|bf16]

Both sides: the full-size MaskGIT-VQGAN architecture with random weights, 256x256 centre crops of
real ImageNet JPEGs (../shared/data/imagenet-sample), channels-last, batch 8, fp32 or bf16 autocast
(bf16: the job also runs its first two batches in fp32 to report agreement, as it always does). The
plain loop (benchmarks/common.py) writes nothing; the job reads tar shards (16 images each), writes
Parquet + commit records. For each image count the two alternate `--repeats` times in one Ray
session, so the machine's noise hits both alike; medians per count are then fitted as
`seconds = fixed + images / rate`: the fixed cost (Ray Data start-up, model actor start) and the
steady-state images/s of each side, whose ratio is what a long job sees. Also printed: the on-disk
bytes per view of the proxy codes against the 320-byte bound (256 codes x 10 bits).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from common import fit_fixed_and_rate, make_workdir, plain_loop, sample_images, shard_list, timed_job
from jobs.precompute_proxy import main as precompute
from titok_core import VQGAN_PRESETS, MaskGITVQGAN

PER_SHARD = 16


def codes_bytes_per_view(out: Path) -> tuple[float, float]:
    """(compressed bytes of the proxy_codes column, of whole rows) per view."""
    codes = rows_bytes = views = 0
    for f in out.glob("*.parquet"):
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(rg).column(c)
                rows_bytes += col.total_compressed_size
                codes += col.total_compressed_size if col.path_in_schema.startswith("proxy_codes") else 0
        views += sum(len(v) for v in pq.read_table(f, columns=["view_flips"]).column(0).to_pylist())
    return codes / views, rows_bytes / views


def check_cost(teacher: torch.nn.Module, batch_size: int, repeats: int = 3) -> None:
    """What the bf16 agreement check costs: each model actor runs its first CHECK batches once more in
    fp32, so its share of the model's time falls with the batches an actor encodes."""
    import inspect

    from pipelines.encode.model import EncodeViews
    check = inspect.signature(EncodeViews.__init__).parameters["bf16_check_batches"].default
    x = torch.rand(batch_size, 3, 256, 256).contiguous(memory_format=torch.channels_last)

    def seconds(bf16: bool) -> float:
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                teacher.encode(x)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    fp32, bf16 = seconds(False), seconds(True)
    print(f"  bf16 check: {check} fp32 batches per model actor ({fp32:.2f} s each vs {bf16:.2f} s in bf16); "
          "share of an actor's model time:")
    for batches in (6, 100, 1000, 5000):
        share = check * fp32 / (check * fp32 + batches * bf16)
        print(f"    {batches:5d} batches per actor ({batches * batch_size:7d} images): {share:6.2%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[16, 32, 48], help="image counts (multiples of 16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    import ray
    bf16 = args.precision == "bf16"
    images = sample_images(max(args.counts))
    work = make_workdir(images, PER_SHARD)
    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["f16-256"]).eval()
    torch.save(teacher.state_dict(), work / "teacher.bin")
    teacher = teacher.to(memory_format=torch.channels_last)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, num_cpus=os.cpu_count())
    job_med, loop_med = [], []
    try:
        for n in args.counts:
            argv = ["--input", shard_list(work, n // PER_SHARD), "--teacher", str(work / "teacher.bin"),
                    "--views", "center", "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads()),
                    "--precision", args.precision]
            job_s, loop_s = [], []
            for _ in range(args.repeats):
                job_s.append(timed_job(precompute, argv, work / "out"))
                loop_s.append(plain_loop([im.path for im in images[:n]], teacher, args.batch_size, bf16=bf16))
            job_med.append(statistics.median(job_s))
            loop_med.append(statistics.median(loop_s))
            print(f"  {n:4d} images: job {job_med[-1]:6.1f} s, loop {loop_med[-1]:6.1f} s")
    finally:
        ray.shutdown()
    job_fixed, job_rate = fit_fixed_and_rate(args.counts, job_med)
    loop_fixed, loop_rate = fit_fixed_and_rate(args.counts, loop_med)
    print(f"\nfull-size MaskGIT-VQGAN (random weights), 256x256, batch {args.batch_size}, {args.precision} channels-last, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, medians of {args.repeats}, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  plain loop   fixed {loop_fixed:5.1f} s   steady state {loop_rate:6.2f} img/s")
    print(f"  job          fixed {job_fixed:5.1f} s   steady state {job_rate:6.2f} img/s")
    codes_b, row_b = codes_bytes_per_view(work / "out")
    print(f"  proxy_codes on disk: {codes_b:.0f} bytes per view (bound: 320 = 256 codes x 10 bits; "
          f"uint16 raw 512); whole row incl. the stored base image: {row_b:.0f} bytes per view")
    print(f"  job / loop, steady state   {job_rate / loop_rate:.2f}x")
    if bf16:
        check_cost(teacher, args.batch_size)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
