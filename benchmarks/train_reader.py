"""The stage-1 training reader: stored base images -> view crops -> model input, per worker and core.

    python benchmarks/train_reader.py [--images 256] [--batches 40] [--repeats 3] [--formats zstd png jpeg] [--cpu-float]

What a Ray Train worker does for every sample of every epoch (pipelines/train/data.py): pick the
view, decode the stored base image, crop and flip it, and hand the uint8 batch to the training step
(a GPU worker moves it as it is and converts it to float on the device; `--cpu-float` converts on
the CPU, as a CPU-only worker does, where that conversion competes with the reader threads). Here
the rows of a proxy dataset (real ImageNet JPEGs, official resize, offsets-4 views) are in memory,
so the numbers are the reader's CPU alone, not storage. `iterate_batches` runs with 1 and 2 decode
threads (a worker gets one thread per CPU it reserves); printed per stored format: images/s, ms per
image, the 1 -> 2 core scaling (1.00 = perfectly linear) and the cores one GPU needs to be fed
2,000 images/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pyarrow as pa
import torch

from common import sample_images
from pipelines import schema as S
from pipelines.encode.write import shard_table
from pipelines.preprocess import decode_and_preprocess, encode_stored_image, to_model_input, view_offset, view_specs
from pipelines.train.data import ViewSampler, iterate_batches

TARGET = 2000.0  # images/s a GPU consumes in stage 1 (order of magnitude for S-128 on an A100)


class InMemoryShard:
    """Stands in for a Ray Train dataset shard: one pass yields the table as numpy columns."""

    def __init__(self, table: pa.Table):
        self.table = table

    def iter_batches(self, batch_size=None, batch_format="numpy", **_):
        yield {name: np.asarray(self.table.column(name).to_pylist(), dtype=object) for name in self.table.column_names}


def proxy_rows(bases: list[np.ndarray], image_format: str) -> pa.Table:
    views = view_specs("offsets-4")
    decoded = S.DecodedShard("x.tar", "x")
    for i, base in enumerate(bases):
        stored, pixels = encode_stored_image(base, image_format)
        decoded.add(f"k{i}", 0, "x.tar", f"k{i}.jpg", stored, pixels)
    offsets = np.array([[view_offset(*b.shape[:2], v) for v in views] for b in bases], np.int32)
    encoded = S.EncodedShard.from_decoded(decoded, np.zeros((len(bases), len(views), 256), np.uint16), offsets,
                                          [v.flip for v in views], {})
    meta = S.DatasetMetadata("offsets-4", tuple(views), 256, 256, image_format,
                             teacher=S.ModelIdentity("MaskGITVQGAN", {}, "0" * 64, "x"), proxy_codebook_size=1024)
    return shard_table(encoded, meta)


def images_per_s(table: pa.Table, threads: int, batches: int, micro_batch: int, cpu_float: bool) -> float:
    sampler = ViewSampler(seed=0, crop=256, with_codes=True, codebook_size=1024)
    it = iterate_batches(InMemoryShard(table), sampler, micro_batch=micro_batch, start_epoch=0, start_batch=0,
                         shuffle_seed=0, shuffle_buffer=0, cache=True, decode_threads=threads)
    next(it)  # warm up the pool
    t0 = time.perf_counter()
    for _ in range(batches):
        _, _, batch = next(it)
        if cpu_float:  # a CPU worker: the training step's float conversion competes with the reader
            to_model_input(batch["images"])
        else:  # a GPU worker: the uint8 batch is moved as it is and becomes float on the GPU
            torch.as_tensor(batch["images"])
    elapsed = time.perf_counter() - t0
    it.close()
    return batches * micro_batch / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", nargs="+", default=["zstd", "png", "jpeg"])
    ap.add_argument("--cpu-float", action="store_true",
                    help="convert each batch to float on the CPU, as a CPU-only worker does (default: as a GPU "
                         "worker, which moves the uint8 batch and converts it on the device)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the worker's training step has its own threads; this measures the reader
    bases = [decode_and_preprocess(open(im.path, "rb").read()) for im in sample_images(args.images)]
    print(f"{len(bases)} real ImageNet JPEGs (official resize, offsets-4 views), micro-batch {args.micro_batch}, "
          f"{args.batches} batches per run, medians of {args.repeats}, {os.cpu_count()} CPUs, float conversion on "
          f"the {'CPU' if args.cpu_float else 'GPU (uint8 handed over)'}, load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'stored as':10s} {'1 thread img/s':>15s} {'ms/img':>7s} {'2 threads img/s':>16s} {'scaling':>8s} "
          f"{'cores for 2,000 img/s':>22s}")
    for fmt in args.formats:
        table = proxy_rows(bases, fmt)
        one, two = (statistics.median(images_per_s(table, threads, args.batches, args.micro_batch, args.cpu_float)
                                      for _ in range(args.repeats)) for threads in (1, 2))
        print(f"{fmt:10s} {one:15.0f} {1e3 / one:7.2f} {two:16.0f} {two / (2 * one):8.2f} {TARGET / one:22.1f}")


if __name__ == "__main__":
    main()
