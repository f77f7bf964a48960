"""How a proxy dataset should store its base images: bytes, CPU to write, CPU to read, codes changed.

    python benchmarks/image_storage.py [--images 64] [--repeats 3] [--teacher debug|f16-256]

For real ImageNet JPEGs after the official resize (the base images a proxy dataset stores), each
stored format of `pipelines.preprocess` (zstd, png, jpeg) and two candidates it does not offer
(WebP lossless, raw RGB + zstd without the row deltas) are measured side by side on one core:
  store      ms per image to encode the base image (precompute pays it once)
  read       ms per image to decode it and crop the centre view (training pays it every epoch)
  bytes      per image
  codes      proxy codes (teacher encode of every offsets-2 view) that differ from the lossless
             codes, a random teacher of the given size (real weights are not available offline:
             read the number as an indication, a random teacher has fewer, flatter codes)
and the lifetime CPU of a stage-1 run relative to the official on-the-fly pipeline,
  (decode + resize + store + 200 x read) / (200 x (decode + resize)),
the official recipe reading every image about 200 times (1M steps x batch 256 / 1.28M images).
Medians over repeats; single-threaded (torch and Arrow set to one thread).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from common import sample_images
from pipelines.preprocess import (
    CENTER,
    apply_view,
    decode_and_preprocess,
    decode_stored_image,
    encode_stored_image,
    to_model_input,
    view_specs,
)
from titok_core import VQGAN_PRESETS, MaskGITVQGAN

EPOCHS_PER_IMAGE = 200  # stage 1 of the official recipe: 1M steps x 256 / 1.28M images


def _webp(pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="WEBP", lossless=True, method=0)
    return buf.getvalue(), pixels


def _raw_zstd(pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
    return pa.Codec("zstd", compression_level=3).compress(np.ascontiguousarray(pixels), asbytes=True), pixels


def _read_raw_zstd(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(pa.Codec("zstd").decompress(data, decompressed_size=int(np.prod(shape))), np.uint8).reshape(
        shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher", choices=sorted(VQGAN_PRESETS), default="debug")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    paths = [im.path for im in sample_images(args.images)]
    data = [open(p, "rb").read() for p in paths]

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bases = [decode_and_preprocess(d) for d in data]
        times.append((time.perf_counter() - t0) / len(data) * 1e3)
    decode_resize = statistics.median(times)

    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS[args.teacher]).eval().to(memory_format=torch.channels_last)
    views = view_specs("offsets-2")

    def codes(images: list[np.ndarray]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for image in images:
                crops = np.stack([apply_view(image, v) for v in views])
                out.append(teacher.encode(to_model_input(crops).contiguous(memory_format=torch.channels_last)).numpy())
        return np.stack(out)

    lossless = codes(bases)
    formats = {f: (lambda x, f=f: encode_stored_image(x, f), decode_stored_image) for f in ("zstd", "png", "jpeg")}
    formats["webp-lossless"] = (_webp, decode_stored_image)
    formats["raw-zstd (no deltas)"] = (_raw_zstd, None)
    print(f"{len(data)} real ImageNet JPEGs, mean {np.mean([len(d) for d in data]) / 1024:.0f} KiB; official decode + "
          f"resize {decode_resize:.2f} ms/image; one thread; torch {torch.__version__}; medians of {args.repeats}\n")
    print(f"{'format':22s} {'store ms':>9s} {'read ms':>8s} {'KiB':>7s} {'codes changed':>14s} {'lifetime vs official':>21s}")
    for name, (store, read) in formats.items():
        store_t, read_t = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            stored = [store(b) for b in bases]
            store_t.append((time.perf_counter() - t0) / len(bases) * 1e3)
            t0 = time.perf_counter()
            for (blob, _), base in zip(stored, bases):
                pixels = read(blob) if read is not None else _read_raw_zstd(blob, base.shape)
                apply_view(pixels, CENTER)
            read_t.append((time.perf_counter() - t0) / len(bases) * 1e3)
        seen = [pixels for _, pixels in stored]
        changed = float((codes(seen) != lossless).mean())
        kib = np.mean([len(blob) for blob, _ in stored]) / 1024
        s, r = statistics.median(store_t), statistics.median(read_t)
        lifetime = (decode_resize + s + EPOCHS_PER_IMAGE * r) / (EPOCHS_PER_IMAGE * decode_resize)
        print(f"{name:22s} {s:9.2f} {r:8.2f} {kib:7.1f} {changed:13.3%} {lifetime:21.3f}")
    print(f"\n(lifetime: precompute's decode + resize + store once, plus {EPOCHS_PER_IMAGE} reads, over "
          f"{EPOCHS_PER_IMAGE} x the official decode + resize; the teacher's forward passes are not counted)")


if __name__ == "__main__":
    main()
