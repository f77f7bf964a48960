"""Evaluate a tokenizer's reconstructions by the paper's protocol: rFID, PSNR, SSIM, LPIPS, codebook use.

Each image's 256x256 centre crop (the official eval transform) is encoded and decoded by the
tokenizer (an official .bin, our checkpoint directory, or the MaskGIT-VQGAN teacher itself: the
paper's baseline row), clamped and rounded to uint8, and measured against the crop; rFID compares
the reconstructions with the same crops. Input: WebDataset shards, or a proxy dataset's stored
pixels. Per-shard results (per-image Parquet, float64 feature statistics) are committed like the
other shard jobs': kill it, rerun the same command, and committed shards are not redone; the result
depends neither on the number of workers nor on the shard order. --output gets metrics.json,
metrics.md (ours beside the paper's), worst.png / best.png and per_image/ (Parquet, one row per image).

example (the paper's protocol: ImageNet-1k val, 50,000 images, on a GPU cluster):
  ray job submit --working-dir . -- python jobs/evaluate_tokenizer.py \\
      --tokenizer https://huggingface.co/fun-research/TiTok/resolve/main/tokenizer_titok_l32.bin \\
      --input 's3://bucket/imagenet/val-{000000..000049}.tar' --output s3://bucket/eval/titok-l32 \\
      --inception-weights s3://bucket/models/pt_inception-2015-12-05-6726825d.pth \\
      --lpips-weights s3://bucket/models/vgg16-397923af.pth --workers 8 --num-gpus 1 --batch-size 64
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import runtime  # noqa: E402
from pipelines.encode import options  # noqa: E402
from pipelines.encode.job import format_summary  # noqa: E402
from pipelines.evaluate import report  # noqa: E402
from pipelines.evaluate.features import INCEPTION_FILES, FeatureSpec  # noqa: E402
from pipelines.evaluate.job import (  # noqa: E402
    EvaluateJobConfig,
    check_output,
    lpips_weights_sha256,
    per_image_output,
    run,
)
from titok_core import MaskGITVQGAN, TiTok, TiTokReleased  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="evaluate_tokenizer.py", description=__doc__)
    options.add_io_args(p)
    options.add_input_format_arg(p)
    options.add_image_args(p, views=False)
    p.add_argument("--tokenizer", required=True,
                   help="what to evaluate: official tokenizer_titok_*.bin, our checkpoint directory (stage 2 / "
                        "released form), or a MaskGIT-VQGAN teacher; path, URL or s3://")
    g = p.add_argument_group("metrics")
    g.add_argument("--inception-weights", default=None,
                   help=f"FID Inception-v3 weights ({INCEPTION_FILES[1]}); path, URL or s3://. Default: the "
                        "library's cache under TORCH_HOME (hub/checkpoints), else a download")
    g.add_argument("--lpips-weights", default=None,
                   help="ImageNet VGG16 weights for LPIPS (vgg16-397923af.pth); path, URL or s3://. Default: "
                        "torch's hub cache under TORCH_HOME, else a download")
    g.add_argument("--no-lpips", action="store_true", help="measure no LPIPS (grids then rank by PSNR)")
    g.add_argument("--reference-stats", default=None,
                   help="real-image statistics saved by --save-reference-stats for the same split: the input "
                        "crops' features are then not computed again")
    g.add_argument("--save-reference-stats", default=None, metavar="NPZ",
                   help="write the real images' statistics (mu, sigma, n, protocol, Inception identity) here")
    g.add_argument("--grid-rows", type=runtime.positive_int, default=8, help="images in worst.png / best.png")
    g.add_argument("--random-features", action="store_true",
                   help="smoke tests only: a small random feature network instead of Inception; its FID is "
                        "reported as fid_random_features, never as rFID")
    options.add_compute_args(p)
    # One view, the official eval crop; fp32 unless asked (the paper's numbers are not bf16 ones).
    p.set_defaults(views="center", precision="fp32")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    try:
        args = parse_args(argv)
        options.check_args(args)
        _, model = runtime.load_model_uri(args.tokenizer, option="--tokenizer", what="tokenizer weights",
                                             kinds=(TiTokReleased, MaskGITVQGAN, TiTok))
        if isinstance(model, TiTok):
            return runtime.fail(f"--tokenizer {args.tokenizer} is a stage-1 TiTok (proxy-code logits, no pixel "
                                "decoder): evaluate its stage-2 / released form")
        if isinstance(model, MaskGITVQGAN):  # the teacher as a tokenizer: its codes are the tokens
            factor = model.config.downsample_factor
            if args.resolution % factor:
                return runtime.fail(f"--resolution {args.resolution} is not divisible by the teacher's "
                                    f"downsampling factor {factor}")
            codes = (args.resolution // factor) ** 2
            named = dict(teacher=runtime.model_identity(args.tokenizer, model),
                         proxy_codebook_size=model.config.codebook_size)
        else:
            if args.resolution != model.config.image_size:
                return runtime.fail(f"--resolution {args.resolution} does not match the tokenizer's image size "
                                    f"{model.config.image_size}")
            codes = model.config.num_latent_tokens
            named = dict(tokenizer=runtime.model_identity(args.tokenizer, model),
                         codebook_size=model.config.codebook_size)
        features = FeatureSpec.random() if args.random_features else FeatureSpec.inception(args.inception_weights)
        lpips_sha256 = None if args.no_lpips else lpips_weights_sha256(args.lpips_weights)
        dataset = options.dataset_metadata(args, codes_per_view=codes, image_format=None, **named)
        shards = options.encode_config(args, model_uri=args.tokenizer, model_option="--tokenizer", dataset=dataset,
                                       input_suffix=options.input_suffix(args.input, args.input_format))
        shards = dataclasses.replace(shards, output=per_image_output(args.output))
        reference = (report.load_reference(args.reference_stats, features, shards.storage_options)
                     if args.reference_stats else None)
        cfg = EvaluateJobConfig(args.output, shards, features, lpips=not args.no_lpips, lpips_weights=args.lpips_weights,
                                lpips_sha256=lpips_sha256, reference=reference,
                                save_reference=args.save_reference_stats, grid_rows=args.grid_rows)
        check_output(cfg)  # everything above is checked before Ray starts or anything is written
        summary, result, code = run(cfg, args.ray_address)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        return runtime.fail(str(e))
    print(format_summary(summary))
    if result is not None:
        print(report.format_metrics(result))
        print(f"report            {args.output}: metrics.json, metrics.md, worst.png, best.png, per_image/")
    return code


if __name__ == "__main__":
    sys.exit(main())
