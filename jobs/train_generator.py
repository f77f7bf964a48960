"""Train a class-conditional MaskGIT generator on a token dataset, on Ray Train.

The tokens come from jobs/tokenize_dataset.py (no tokenizer runs while training): each step picks, per
sample and epoch, one of its stored views' token sequences. The dataset's codebook size, tokens per
image and labels must fit the generator preset. Recipes (optimizer, schedule, batch size, steps, label
dropout, label smoothing, EMA) are presets in pipelines/train/recipes.py; this command only chooses
the data, the output, the workers, and may override the steps and the global batch size.

Rerunning the same command resumes from the latest checkpoint in --output; a finished run is not
trained again. Worker failures restart from the latest checkpoint (--max-failures). With --tokenizer
(the dataset's tokenizer, released form) the run draws sample grids every image_every steps.

examples:
  ray job submit --working-dir . -- python jobs/train_generator.py --preset L-32 \\
      --data s3://bucket/tokens/train --tokenizer hf://yucornetto/tokenizer_titok_l32_imagenet \\
      --num-workers 32 --use-gpu --output s3://bucket/runs/generator-l32
  # a 2-core laptop, seconds:
  python jobs/train_generator.py --preset debug --data tokens/ --num-workers 2 --output runs/gen
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import runtime  # noqa: E402
from pipelines.train.config import add_resource_arguments, resources  # noqa: E402
from pipelines.train.recipes import GENERATOR_RECIPES  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="train_generator.py", description=__doc__)
    p.add_argument("--preset", choices=sorted(GENERATOR_RECIPES), required=True,
                   help="generator size and its recipe (L-32 / B-64 / S-128: the paper's)")
    p.add_argument("--data", required=True, help="token dataset written by jobs/tokenize_dataset.py (dir or URL)")
    p.add_argument("--output", required=True, help="run directory (local or s3://): checkpoints, metrics, model/")
    p.add_argument("--tokenizer", default=None,
                   help="the dataset's tokenizer (released form: hf:// name, official .bin or our directory); "
                        "decodes the sample grids. Without it the run draws none")
    p.add_argument("--steps", type=runtime.positive_int, default=None, help="override the recipe's optimizer steps")
    p.add_argument("--batch-size", type=runtime.positive_int, default=None,
                   help="override the recipe's global batch size (token sequences per step)")
    add_resource_arguments(p, "bf16 mixed precision")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    from pipelines.train.generator_job import resolve_generator_run
    from pipelines.train.job import ConfigError, run
    try:
        args = parse_args(argv)
        cfg = resolve_generator_run(
            preset=args.preset, data=args.data, output=args.output, steps=args.steps, batch_size=args.batch_size,
            tokenizer=args.tokenizer, **resources(args),
        )
        if cfg.tokenizer is None:
            print(f"note: no --tokenizer, so no sample grids (the dataset's tokenizer is "
                  f"{cfg.dataset.metadata.model.source})", file=sys.stderr)
        return run(cfg, args.ray_address)
    except (ConfigError, runtime.UsageError) as e:  # raised before any worker starts
        return runtime.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
