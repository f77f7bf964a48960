"""The proxy-code job (Ray Data) vs a plain single-process PyTorch loop, same images, same teacher.

    python benchmarks/precompute.py [--images 48] [--repeats 3]

Both sides: the full-size MaskGIT-VQGAN architecture with random weights, 256x256 centre crops of
real ImageNet JPEGs (../shared/data/imagenet-sample), fp32, channels-last, batch 8. The plain loop
(benchmarks/common.py) writes nothing; the job reads tar shards, writes Parquet + commit records.
Runs alternate so the machine's noise hits both alike; medians and the ratio are printed, plus the
on-disk bytes per view of the proxy codes against the 320-byte bound (256 codes x 10 bits).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch

from common import make_workdir, plain_loop, report, sample_images, side_by_side, timed_job
from jobs.precompute_proxy import main as precompute
from titok_core import VQGAN_PRESETS, MaskGITVQGAN


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    images = sample_images(args.images)
    work = make_workdir(images)
    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["f16-256"]).eval()
    torch.save(teacher.state_dict(), work / "teacher.bin")
    teacher = teacher.to(memory_format=torch.channels_last)
    argv = ["--input", str(work / "shards"), "--teacher", str(work / "teacher.bin"), "--views", "center",
            "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads())]
    job_s, loop_s = side_by_side(
        len(images), args.repeats,
        job=lambda: timed_job(precompute, argv, work / "out"),
        loop=lambda: plain_loop([im.path for im in images], teacher, args.batch_size))
    report(f"{len(images)} real ImageNet JPEGs, full-size MaskGIT-VQGAN (random weights), 256x256, batch "
           f"{args.batch_size}, fp32 channels-last, torch {torch.__version__}, median of {args.repeats}",
           len(images), job_s, loop_s)
    codes_b, row_b = codes_bytes_per_view(work / "out")
    print(f"  proxy_codes on disk: {codes_b:.0f} bytes per view (bound: 320 = 256 codes x 10 bits; "
          f"uint16 raw 512); whole row incl. PNG base image: {row_b:.0f} bytes per view")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
