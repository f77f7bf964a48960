"""The proxy-code job (Ray Data) vs a plain single-process PyTorch loop, same images, same teacher.

    python benchmarks/precompute.py [--images 48] [--repeats 3] [--views center]

Both sides: the full-size MaskGIT-VQGAN architecture with random weights, 256x256 centre crops of
real ImageNet JPEGs (../shared/data/imagenet-sample), fp32, channels-last, batch 8. The plain loop
is a torch DataLoader (1 worker decoding, the main process running the model) and writes nothing;
the job reads tar shards, writes Parquet + commit records, and pays Ray's start-up. Runs alternate
job / loop so the machine's noise hits both alike; medians and the ratio are printed, plus the
on-disk bytes per view of the proxy codes against the 320-byte bound (256 codes x 10 bits).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.images import decode_and_preprocess  # noqa: E402
from pipelines.shards import collect_images, pack  # noqa: E402
from pipelines.views import View, apply_view  # noqa: E402
from titok_core import VQGAN_PRESETS, MaskGITVQGAN  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"


class Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        base = decode_and_preprocess(Path(self.paths[i]).read_bytes())
        crop = apply_view(base, View(0.5, False))
        return torch.from_numpy(crop).permute(2, 0, 1)


def plain_loop(paths: list[str], teacher: MaskGITVQGAN, batch_size: int) -> float:
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(Images(paths), batch_size=batch_size, num_workers=1)
    with torch.inference_mode():
        for batch in loader:
            teacher.encode(batch.float().div_(255))
    return time.perf_counter() - t0


def job(shards: str, out: str, teacher_path: str, batch_size: int, views: str) -> float:
    from jobs.precompute_proxy import main
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    code = main(["--input", shards, "--output", out, "--teacher", teacher_path, "--views", views,
                 "--batch-size", str(batch_size), "--threads", str(torch.get_num_threads())])
    assert code == 0, f"job failed with {code}"
    return time.perf_counter() - t0


def codes_bytes_per_view(out: str) -> tuple[float, float]:
    """(compressed bytes of the proxy_codes column, of whole rows) per view."""
    codes = rows_bytes = views = 0
    for f in Path(out).glob("*.parquet"):
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(rg).column(c)
                rows_bytes += col.total_compressed_size
                if col.path_in_schema.startswith("proxy_codes"):
                    codes += col.total_compressed_size
        views += sum(len(v) for v in pq.read_table(f, columns=["view_flips"]).column(0).to_pylist())
    return codes / views, rows_bytes / views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--views", default="center")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    images = collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))[: args.images]
    pack(images, str(work / "shards"), 16)
    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["f16-256"]).eval()
    torch.save(teacher.state_dict(), work / "teacher.bin")
    teacher = teacher.to(memory_format=torch.channels_last)
    paths = [im.path for im in sorted(images, key=lambda im: im.key)]

    import ray
    ray.init(include_dashboard=False, num_cpus=os.cpu_count())
    loop_s, job_s = [], []
    for _ in range(args.repeats):
        job_s.append(job(str(work / "shards"), str(work / "out"), str(work / "teacher.bin"), args.batch_size, args.views))
        loop_s.append(plain_loop(paths, teacher, args.batch_size))
    codes_b, row_b = codes_bytes_per_view(str(work / "out"))
    ray.shutdown()
    n = len(paths)
    lj, ll = statistics.median(job_s), statistics.median(loop_s)
    print(f"\n{n} real ImageNet JPEGs, full-size MaskGIT-VQGAN (random weights), 256x256, batch {args.batch_size}, "
          f"fp32 channels-last, {os.cpu_count()} CPUs, torch {torch.__version__}, median of {args.repeats}")
    print(f"  plain PyTorch loop (DataLoader, no output)    {n / ll:6.2f} img/s  ({ll:.1f} s)")
    print(f"  precompute job (Ray Data, Parquet + commits)  {n / lj:6.2f} img/s  ({lj:.1f} s, incl. actor start-up)")
    print(f"  job / loop                                    {ll / lj:6.2f}x")
    print(f"  proxy_codes on disk: {codes_b:.0f} bytes per view (bound: 320 = 256 codes x 10 bits; "
          f"uint16 raw 512); whole row incl. PNG base image: {row_b:.0f} bytes per view")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
