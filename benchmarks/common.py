"""Pieces shared by the job-vs-plain-loop benchmarks: the same images, the same model, side by side."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.preprocess import (  # noqa: E402
    View,
    apply_view,
    decode_and_preprocess,  # noqa: E402
)
from pipelines.shards import SourceImage, collect_images, pack  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"


class CenterCrops(torch.utils.data.Dataset):
    """JPEG files -> official preprocessing -> 256 centre crop, uint8 CHW (what the jobs feed the model)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        base = decode_and_preprocess(Path(self.paths[i]).read_bytes())
        return torch.from_numpy(apply_view(base, View(0.5, False))).permute(2, 0, 1)


def plain_loop(paths: list[str], model: torch.nn.Module, batch_size: int, bf16: bool = False) -> float:
    """A single-process PyTorch loop: DataLoader with 1 decoding worker, model.encode in the main process
    (bf16: autocast and channels-last input, as the job runs it)."""
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(CenterCrops(paths), batch_size=batch_size, num_workers=1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in loader:
            x = batch.float().div_(255)
            model.encode(x.contiguous(memory_format=torch.channels_last) if bf16 else x)
    return time.perf_counter() - t0


def fit_fixed_and_rate(counts: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least squares of seconds = fixed + count / rate: (fixed seconds, steady-state images/s)."""
    slope, fixed = np.polyfit(np.asarray(counts, float), np.asarray(seconds, float), 1)
    return float(fixed), float(1.0 / slope) if slope > 0 else float("inf")


def shard_list(work: Path, shards: int) -> str:
    """A .txt list naming the first `shards` shards of `work/shards` (a job input of that many)."""
    names = sorted(p.name for p in (work / "shards").glob("*.tar"))[:shards]
    path = work / f"first-{shards}.txt"
    path.write_text("".join(f"shards/{n}\n" for n in names))
    return str(path)


def sample_images(n: int) -> list[SourceImage]:
    """The first n of the 250 real ImageNet JPEGs; beyond 250 the sample repeats under new keys that sort
    after the whole previous copy, so a shard holds distinct images (as a real one does: Parquet's
    compression would otherwise find the repeats of one image side by side)."""
    found = sorted(collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv")), key=lambda im: im.key)
    return [SourceImage(f"zz{i // len(found):03d}_{im.key}" if i >= len(found) else im.key, im.path, im.label)
            for i, im in ((i, found[i % len(found)]) for i in range(n))]


def make_workdir(images: list[SourceImage], per_shard: int = 16) -> Path:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    pack(images, str(work / "shards"), per_shard)
    return work


def timed_job(main: Callable[[list[str]], int], argv: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    code = main(argv + ["--output", str(out)])
    assert code == 0, f"job failed with exit code {code}"
    return time.perf_counter() - t0


def side_by_side(n: int, repeats: int, job: Callable[[], float], loop: Callable[[], float]) -> tuple[float, float]:
    """Alternate job and loop `repeats` times in one local Ray session; (median job s, median loop s)."""
    import ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, num_cpus=os.cpu_count())
    job_s, loop_s = [], []
    try:
        for _ in range(repeats):
            job_s.append(job())
            loop_s.append(loop())
    finally:
        ray.shutdown()
    return statistics.median(job_s), statistics.median(loop_s)


def report(title: str, n: int, job_s: float, loop_s: float) -> None:
    print(f"\n{title}")
    print(f"  plain PyTorch loop (DataLoader, no output)    {n / loop_s:7.2f} img/s  ({loop_s:.1f} s)")
    print(f"  job (Ray Data, Parquet + per-shard commits)   {n / job_s:7.2f} img/s  ({job_s:.1f} s, incl. actor start-up)")
    print(f"  job / loop                                    {loop_s / job_s:7.2f}x")
