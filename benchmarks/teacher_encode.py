"""Throughput of the full-size MaskGIT-VQGAN teacher encoder (images -> proxy codes).

    python benchmarks/teacher_encode.py [--batch-size 8] [--repeats 5] [--device cpu]

Random weights (the official f16-256 architecture), 256x256 inputs. Variants run side by side in
one process, interleaved, so the machine's noise hits them alike; medians and ratios are printed:
  official-style  explicit F.pad before every 3x3 conv (as the official Conv2dSame), NCHW, fp32
  ours fp32       padding inside the conv, NCHW, inference mode
  ours fp32 CL    + channels-last
  ours bf16 CL    + bf16 autocast (CPU with AMX or GPU); reports how many codes agree with fp32
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from titok_core import VQGAN_PRESETS, MaskGITVQGAN


class ExplicitPadConv(nn.Module):
    """The official way: pad with F.pad (a copy of the activation), then an unpadded conv."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.pad = conv.padding[0]
        self.conv = conv
        conv.padding = (0, 0)

    def forward(self, x):
        if self.pad:
            x = F.pad(x, [self.pad] * 4)
        return self.conv(x)


def official_style(model: MaskGITVQGAN) -> MaskGITVQGAN:
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Conv2d):
                setattr(mod, child_name, ExplicitPadConv(child))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)

    base = MaskGITVQGAN(VQGAN_PRESETS["f16-256"]).eval().to(dev)
    cl = copy.deepcopy(base).to(memory_format=torch.channels_last)
    variants = {
        "official-style fp32": (official_style(base), None),
        "ours fp32": (base, None),
        "ours fp32 channels-last": (cl, None),
        "ours bf16 channels-last": (cl, torch.bfloat16),
    }
    x = torch.rand(args.batch_size, 3, 256, 256, device=dev)

    def run(model, dtype):
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            codes = model.encode(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return codes

    ref = run(base, None)  # warm-up + fp32 reference codes
    agreement = {}
    for name, (model, dtype) in variants.items():
        codes = run(model, dtype)  # warm-up
        agreement[name] = float((codes == ref).float().mean())
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.repeats):
        for name, (model, dtype) in variants.items():
            t0 = time.perf_counter()
            run(model, dtype)
            times[name].append(time.perf_counter() - t0)

    print(f"MaskGIT-VQGAN f16-256 encoder, random weights, 256x256, batch {args.batch_size}, device {dev}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"median of {args.repeats}")
    baseline = statistics.median(times["official-style fp32"])
    for name in variants:
        med = statistics.median(times[name])
        print(f"  {name:26s} {args.batch_size / med:7.2f} img/s   {baseline / med:5.2f}x official-style   "
              f"codes equal to fp32: {100 * agreement[name]:.2f}%")


if __name__ == "__main__":
    main()
