"""Train a TiTok tokenizer in the paper's two stages on Ray Train.

Stage 1 learns the proxy codes precomputed by jobs/precompute_proxy.py (no teacher runs while
training); stage 2 fine-tunes the decoders on pixels with a GAN. Recipes (optimizer, schedule,
batch size, steps, loss weights) are presets in pipelines/recipes.py; this command only chooses
the data, the output, the workers, and may override the steps and the global batch size.

Rerunning the same command resumes from the latest checkpoint in --output; a finished run is
not trained again. Worker failures restart from the latest checkpoint (--max-failures).

examples:
  ray job submit --working-dir . -- python jobs/train_tokenizer.py --stage 1 --preset L-32 \\
      --data s3://bucket/proxy/train --num-workers 64 --use-gpu --output s3://bucket/runs/l32-stage1
  ray job submit --working-dir . -- python jobs/train_tokenizer.py --stage 2 --preset L-32 \\
      --data s3://bucket/proxy/train --init s3://bucket/runs/l32-stage1/model \\
      --convnext-weights /models/convnext_small.safetensors \\
      --num-workers 64 --use-gpu --output s3://bucket/runs/l32-stage2
  # a 2-core laptop, seconds:
  python jobs/train_tokenizer.py --stage 1 --preset debug --data proxy/ --num-workers 2 --output runs/dbg1
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import runtime  # noqa: E402
from pipelines.train.config import add_resource_arguments, resources  # noqa: E402
from pipelines.train.recipes import RECIPES  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="train_tokenizer.py", description=__doc__)
    p.add_argument("--stage", type=int, choices=(1, 2), required=True, help="1: proxy codes; 2: decoder fine-tuning")
    p.add_argument("--preset", choices=sorted(RECIPES[1]), required=True, help="model size and its recipe")
    p.add_argument("--data", required=True, help="proxy-code dataset written by jobs/precompute_proxy.py (dir or URL)")
    p.add_argument("--output", required=True, help="run directory (local or s3://): checkpoints, metrics, model/")
    p.add_argument("--init", default=None, help="stage 2: the stage-1 model (<stage-1 output>/model or official .bin)")
    p.add_argument("--teacher", default=None,
                   help="MaskGIT-VQGAN weights (default: the one recorded in the dataset); stage 1 decodes grids with "
                        "it, stage 2 initialises the pixel decoder from it")
    p.add_argument("--steps", type=runtime.positive_int, default=None, help="override the recipe's optimizer steps")
    p.add_argument("--batch-size", type=runtime.positive_int, default=None,
                   help="override the recipe's global batch size")
    g = add_resource_arguments(p)
    g.add_argument("--lpips-weights", default=None, help="stage 2: local VGG16 / LPIPS weights for the LPIPS loss")
    g.add_argument("--convnext-weights", default=None, help="stage 2: local timm convnext_small weights")
    g.add_argument("--random-backbones", action="store_true",
                   help="stage 2 smoke tests only: randomly initialised perceptual backbones")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    from pipelines.train.job import ConfigError, resolve_run, run
    try:
        args = parse_args(argv)
        cfg = resolve_run(
            stage=args.stage, preset=args.preset, data=args.data, output=args.output, steps=args.steps,
            batch_size=args.batch_size, teacher=args.teacher, init=args.init,
            lpips_weights=args.lpips_weights, convnext_weights=args.convnext_weights,
            random_backbones=args.random_backbones, **resources(args),
        )
        return run(cfg, args.ray_address)
    except (ConfigError, runtime.UsageError) as e:  # raised before any worker starts
        return runtime.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
