"""Tokenize a whole dataset: images -> TiTok token sequences in Parquet, for generator (MaskGIT) training.

Input is WebDataset shards (as for precompute_proxy.py) or a proxy-code dataset that job wrote
(its stored base images are tokenized as they are). Each input file becomes one Parquet file,
committed atomically with a success record: kill the job at any moment and rerun the same
command; committed files are skipped, nothing is lost or doubled. The tokenizer's identity
(config + weights hash) is recorded in every file's metadata and in the summary.

example:
  ray job submit --working-dir . -- python jobs/tokenize_dataset.py \\
      --tokenizer hf://yucornetto/tokenizer_titok_l32_imagenet \\
      --input 's3://bucket/imagenet/train-{000000..000320}.tar' --output s3://bucket/tokens/train \\
      --views center-flip --workers 8 --num-gpus 1 --batch-size 256 --verify-fraction 0.001
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import runtime  # noqa: E402
from pipelines.encode import options  # noqa: E402
from pipelines.encode.decode import check_proxy_input  # noqa: E402
from pipelines.storage import endpoint_options  # noqa: E402
from titok_core import HUB_MODELS, TiTok, TiTokReleased  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="tokenize_dataset.py", description=__doc__)
    options.add_io_args(p)
    options.add_input_format_arg(p)
    options.add_image_args(p)
    p.add_argument("--tokenizer", default=HUB_MODELS["L-32"],
                   help="TiTok weights: a Hugging Face name (hf://yucornetto/tokenizer_titok_{l32,b64,s128}_imagenet), "
                        "official tokenizer_titok_*.bin or our checkpoint directory; path, URL or s3://")
    p.add_argument("--verify-fraction", type=runtime.fraction, default=0.0,
                   help="decode this random fraction of images' tokens back to pixels; PSNR (and LPIPS when its "
                        "weights are available) against the input crops go into the summary")
    options.add_compute_args(p)
    p.set_defaults(views="center-flip")  # the generator recipe trains on centre crops and their flips
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    try:
        args = parse_args(argv)
        options.check_args(args)
        suffix = options.input_suffix(args.input, args.input_format)
        if suffix == ".parquet":  # a proxy dataset: the right kind, the right crop size
            check_proxy_input(args.input, args.resolution, endpoint_options(args.endpoint_url))
        _, model = runtime.load_model_uri(args.tokenizer, option="--tokenizer", what="tokenizer weights",
                                             kinds=(TiTok, TiTokReleased))
        if args.verify_fraction > 0 and not isinstance(model, TiTokReleased):
            return runtime.fail("--verify-fraction needs a tokenizer with a pixel decoder (released / stage-2 form); "
                                f"{args.tokenizer} is a stage-1 model")
        if args.resolution != model.config.image_size:
            return runtime.fail(f"--resolution {args.resolution} does not match the tokenizer's image size "
                                f"{model.config.image_size}")
        dataset = options.dataset_metadata(args, codes_per_view=model.config.num_latent_tokens, image_format=None,
                                           tokenizer=runtime.model_identity(args.tokenizer, model),
                                           codebook_size=model.config.codebook_size)
        return options.run_job(args, model_uri=args.tokenizer, model_option="--tokenizer", dataset=dataset,
                               input_suffix=suffix,
                               verify_fraction=args.verify_fraction)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        return runtime.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
