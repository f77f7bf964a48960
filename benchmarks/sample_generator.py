"""Class-conditional sampling speed: generator (MaskGIT loop) + de-tokenization (tokens -> pixels).

    python benchmarks/sample_generator.py [--device cuda] [--full-preset L-32] [--skip-full]

Two settings, random weights (speed does not depend on the values):
  debug  the `debug` generator + the `debug` TiTok (released form), `--debug-batch` images
  full   a full-size generator of `--full-preset` with that preset's sampling settings (L-32: BERT,
         8 steps, guidance on) + the full-size TiTok of the same preset, `--full-batch` images
Each repeat times `generate` (every step, both guidance passes) and `decode_tokens` separately and
synchronises the device after each; images/s are medians over repeats. On a GPU a warm-up run of
the same shapes comes first, and TF32 matmuls are allowed as in the official sample_imagenet_titok.py.
The tokenizer's encoder is not needed to turn tokens into pixels, so it is never allocated.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
from torch import nn

from titok_core import (
    GENERATOR_PRESETS,
    PRESETS,
    SAMPLING_PRESETS,
    SamplingConfig,
    TiTokReleased,
    build_generator,
    generate,
)


def _random_(module: nn.Module) -> nn.Module:
    """Allocate a meta-built module on its device and fill it quickly: N(0, 0.02) matrices, unit
    norm scales, zero biases (finite, O(1) activations; no slow paths for denormals or NaNs)."""
    for name, p in module.named_parameters():
        with torch.no_grad():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    return module


def build(preset: str, device: torch.device):
    """A random generator and the decoding half of a random TiTok (released form) of one preset."""
    with torch.device("meta"):
        gen = build_generator(GENERATOR_PRESETS[preset])
        tok = TiTokReleased(PRESETS[preset])
    gen = _random_(gen.to_empty(device=device)).eval()
    for part in (tok.titok.quantize, tok.titok.decoder, tok.pixel):  # the encoder stays on "meta"
        _random_(part.to_empty(device=device))
    return gen, tok.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(gen, tok, sampling: SamplingConfig, batch: int, repeats: int, warmup: int, device: torch.device,
            autocast: contextlib.AbstractContextManager) -> tuple[float, float]:
    """(median generate seconds, median decode seconds) per batch."""
    labels = torch.arange(batch, device=device) % gen.config.num_classes
    g = torch.Generator(device=device).manual_seed(0)
    gen_s, dec_s = [], []
    for i in range(warmup + repeats):
        with torch.inference_mode(), autocast:
            sync(device)
            t0 = time.perf_counter()
            ids = generate(gen, labels, sampling, generator=g)
            sync(device)
            t1 = time.perf_counter()
            images = tok.decode_tokens(ids, clamp=True)
            sync(device)
            t2 = time.perf_counter()
        assert images.shape == (batch, 3, tok.config.image_size, tok.config.image_size)
        if i >= warmup:
            gen_s.append(t1 - t0)
            dec_s.append(t2 - t1)
    return statistics.median(gen_s), statistics.median(dec_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    ap.add_argument("--debug-batch", type=int, default=8)
    ap.add_argument("--debug-repeats", type=int, default=5)
    ap.add_argument("--full-preset", default="L-32", choices=sorted(SAMPLING_PRESETS),
                    help="size of the full-size generator + tokenizer, sampled with that preset's settings")
    ap.add_argument("--full-batch", type=int, default=2)
    ap.add_argument("--full-repeats", type=int, default=1)
    ap.add_argument("--skip-full", action="store_true", help="only the debug setting")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 on cuda, 0 on cpu)")
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda")

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    # The debug generator samples with the L-32 settings (its tokenizer has 32 tokens too).
    settings = [("debug", "debug", SAMPLING_PRESETS["L-32"], args.debug_batch, args.debug_repeats)]
    if not args.skip_full:
        p = args.full_preset
        settings.append((p, p, SAMPLING_PRESETS[p], args.full_batch, args.full_repeats))

    where = f"{device.type} ({args.threads} threads)" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"generator sampling + de-tokenization, random weights, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{where}, torch {torch.__version__}; medians, warm-up runs {warmup}")
    print(f"{'generator + tokenizer':<24}{'batch':>6}{'steps':>6}{'guidance':>20}{'repeats':>8}"
          f"{'generate s':>12}{'detok s':>10}{'gen img/s':>11}{'detok img/s':>13}{'total img/s':>13}")
    for label, preset, sampling, batch, repeats in settings:
        t_build = time.perf_counter()
        gen, tok = build(preset, device)
        t_build = time.perf_counter() - t_build
        gen_s, dec_s = measure(gen, tok, sampling, batch, repeats, warmup, device, autocast())
        guidance = f"{sampling.guidance_scale:g} {sampling.guidance_decay}"
        print(f"{label + ' gen + ' + label + ' tok':<24}{batch:>6}{sampling.num_sample_steps:>6}{guidance:>20}"
              f"{repeats:>8}{gen_s:>12.3f}{dec_s:>10.3f}{batch / gen_s:>11.2f}{batch / dec_s:>13.2f}"
              f"{batch / (gen_s + dec_s):>13.2f}   (built in {t_build:.1f} s)")
        del gen, tok
    return 0


if __name__ == "__main__":
    sys.exit(main())
