"""Precompute MaskGIT-VQGAN proxy codes: ImageNet WebDataset shards -> a training-ready Parquet dataset.

Runs the teacher once over every image and every view, so stage-1 training never runs it. Each
input shard becomes one Parquet file, committed atomically with a success record: kill the job at
any moment and rerun the same command; committed shards are skipped, nothing is lost or doubled.

example:
  ray job submit --working-dir . -- python jobs/precompute_proxy.py \\
      --input 's3://bucket/imagenet/train-{000000..000320}.tar' --output s3://bucket/proxy/train \\
      --views offsets-4 --workers 8 --num-gpus 1 --batch-size 128
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import runtime  # noqa: E402
from pipelines.encode import options  # noqa: E402
from titok_core import HUB_MODELS, MaskGITVQGAN  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="precompute_proxy.py", description=__doc__)
    options.add_io_args(p)
    options.add_image_args(p)
    p.add_argument("--teacher", default=HUB_MODELS["maskgit-vqgan"],
                   help="MaskGIT-VQGAN weights: official .bin or our checkpoint directory; path, hf:// name, URL "
                        "or s3://")
    p.add_argument("--image-format", choices=options.STORED_IMAGE_FORMATS, default=options.DEFAULT_STORED_IMAGE_FORMAT,
                   help="how the base image is stored: zstd (lossless, ~PNG's size, 7x faster to read than PNG), "
                        "png (lossless, universal) or jpeg (q95 4:4:4, 3x smaller; codes are computed on the "
                        "decoded JPEG, so they match what readers decode)")
    options.add_compute_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    try:
        args = parse_args(argv)
        options.check_args(args)
        _, teacher = runtime.load_model_uri(args.teacher, option="--teacher", what="teacher weights",
                                               kinds=(MaskGITVQGAN,))
        factor = teacher.config.downsample_factor
        if args.resolution % factor:
            return runtime.fail(f"--resolution {args.resolution} is not divisible by the teacher's "
                                f"downsampling factor {factor}")
        grid = args.resolution // factor
        dataset = options.dataset_metadata(args, codes_per_view=grid * grid, image_format=args.image_format,
                                           teacher=runtime.model_identity(args.teacher, teacher),
                                           proxy_codebook_size=teacher.config.codebook_size)
        return options.run_job(args, model_uri=args.teacher, model_option="--teacher", dataset=dataset)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        return runtime.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
