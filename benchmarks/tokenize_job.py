"""The tokenize job (Ray Data) vs a plain single-process PyTorch loop, same images, same tokenizer.

    python benchmarks/tokenize_job.py [--images 48] [--repeats 3] [--preset S-128]

Both sides: a TiTok of the given size (stage-1 form: encoding needs no pixel decoder) with random
weights, 256x256 centre crops of real ImageNet JPEGs, fp32, batch 8. The plain loop writes
nothing; the job reads tar shards and writes token Parquet + commit records. Medians and ratio.
"""

from __future__ import annotations

import argparse
import shutil

import torch

from common import make_workdir, plain_loop, report, sample_images, side_by_side, timed_job
from jobs.tokenize_dataset import main as tokenize
from titok_core import PRESETS, TiTok, save_pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--preset", default="S-128", choices=sorted(PRESETS))
    args = ap.parse_args()
    images = sample_images(args.images)
    work = make_workdir(images)
    torch.manual_seed(0)
    model = TiTok(PRESETS[args.preset]).eval()
    save_pretrained(model, work / "tokenizer")
    argv = ["--input", str(work / "shards"), "--tokenizer", str(work / "tokenizer"), "--views", "center",
            "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads())]
    job_s, loop_s = side_by_side(
        len(images), args.repeats,
        job=lambda: timed_job(tokenize, argv, work / "out"),
        loop=lambda: plain_loop([im.path for im in images], model, args.batch_size))
    report(f"{len(images)} real ImageNet JPEGs, TiTok-{args.preset} (random weights), 256x256, batch {args.batch_size}, "
           f"fp32, torch {torch.__version__}, median of {args.repeats}", len(images), job_s, loop_s)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
