"""Stage-1 training speed: precomputed proxy codes (our trainer) vs the teacher run every step (official).

    python benchmarks/train_step.py [--preset S-128] [--batch-size 8] [--steps 3] [--rounds 3]

The official stage-1 loop runs the MaskGIT-VQGAN teacher on every batch to get its targets
(1d-tokenizer utils/train_utils.py: `proxy_codes = pretrained_tokenizer.encode(images)`); our
trainer reads the codes that jobs/precompute_proxy.py stored. Both variants here run the same
TiTok training step (AdamW, grad clip, EMA, the stage-1 loss) on the same real ImageNet crops
in one process, interleaved round by round so machine noise hits both alike; the only difference
is whether the full-size teacher (f16-256 architecture, random weights: speed does not depend on
the values) encodes the batch first, as the official code does (fp32, NCHW, under no_grad).
Images/s are medians over rounds; the ratio is printed last.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.preprocess import View, apply_view, decode_and_preprocess
from pipelines.shards import collect_images
from pipelines.train.recipes import get_recipe
from pipelines.train.stages import Stage1Task
from titok_core import PRESETS, VQGAN_PRESETS, MaskGITVQGAN

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"


def crops(n: int) -> np.ndarray:
    """n real ImageNet images, official preprocessing, centre crop: (n, 256, 256, 3) uint8."""
    paths = sorted(collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv")), key=lambda im: im.key)[:n]
    return np.stack([apply_view(decode_and_preprocess(Path(p.path).read_bytes()), View(0.5, False)) for p in paths])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="S-128", choices=sorted(PRESETS), help="TiTok size trained")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    images = crops(args.batch_size)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["f16-256"]).to(device).eval().requires_grad_(False)
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        stored = teacher.encode(x).cpu().numpy()  # what the precompute job would have written
    recipe = get_recipe(1, args.preset).with_overrides(batch_size=args.batch_size)
    task = Stage1Task(recipe, device, teacher_uri="unused")

    def step(on_the_fly: bool) -> None:
        if on_the_fly:
            with torch.no_grad():
                codes = teacher.encode(torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255)
            codes = codes.cpu().numpy()
        else:
            codes = stored
        task.train_step([{"images": images, "codes": codes}], 0)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(on_the_fly: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(on_the_fly)
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    step(False)  # warm-up: allocator, kernels, optimizer state
    step(True)
    pre, fly = [], []
    for r in range(args.rounds):
        pre.append(timed(False))
        fly.append(timed(True))
        print(f"round {r + 1}: precomputed {pre[-1]:.2f} img/s, teacher on the fly {fly[-1]:.2f} img/s", flush=True)
    p, f = statistics.median(pre), statistics.median(fly)
    machine = platform.processor() or platform.machine()
    print(f"\n{machine}, {args.device}, {args.threads} threads, torch {torch.__version__}")
    print(f"TiTok {args.preset} stage 1, batch {args.batch_size}, fp32; teacher MaskGIT-VQGAN f16-256 (full size)")
    print(f"precomputed codes      {p:8.2f} images/s")
    print(f"teacher every step     {f:8.2f} images/s")
    print(f"ratio                  {p / f:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
