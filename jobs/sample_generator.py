"""Generate images with a class-conditional generator and its tokenizer: PNGs, the ADM .npz, gFID.

Classes come in order, --per-class images each (default: all 1000 ImageNet classes x 50 = the 50k
batch of gFID-50k), with the paper's sampling preset for the generator's size or explicit settings.
Each chunk of classes is seeded from (--seed, chunk index) and committed on its own (PNGs, then its
Parquet file and success record): the same command gives the same images whatever the number of
workers, and a killed run resumes where it stopped. Images are the tokenizer's decoding converted
as the official evaluation does, (x * 255).to(uint8) (truncation). Once every chunk is committed the
job writes samples_<N>x<H>x<W>x3.npz (arr_0 uint8 NHWC, arr_1 labels) for the ADM evaluator, and
says whether the batch is the paper's 50k: fewer images or unbalanced classes give a different FID.
With --reference-stats (the ADM reference batch's mu / sigma for the paper's gFID, or statistics the
evaluation job saved) the model workers also measure every image with the FID Inception network, and
the job writes gFID and the Inception Score (ADM's 10 splits of 5,000) to metrics.json.

examples:
  ray job submit --working-dir . -- python jobs/sample_generator.py \\
      --generator s3://bucket/runs/generator-l32/model --output s3://bucket/samples/l32 \\
      --workers 8 --num-gpus 1 --cpus-per-worker 4 --batch-size 125 \\
      --reference-stats s3://bucket/adm/VIRTUAL_imagenet256_labeled.npz \\
      --inception-weights s3://bucket/models/pt_inception-2015-12-05-6726825d.pth
  # the official release (its tokenizer must be named):
  python jobs/sample_generator.py --generator hf://yucornetto/generator_titok_l32_imagenet \\
      --tokenizer hf://yucornetto/tokenizer_titok_l32_imagenet --classes 0-9 --per-class 4 --output samples/
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import runtime  # noqa: E402
from pipelines.sample import options  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="sample_generator.py", description=__doc__)
    options.add_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    from pipelines.commit import OutputBusyError
    from pipelines.sample.job import format_summary, run
    try:
        args = parse_args(argv)
        cfg = options.resolve(args)
        summary, code = run(cfg, args.ray_address)
    except (ValueError, FileNotFoundError, RuntimeError, OutputBusyError) as e:  # before Ray starts
        return runtime.fail(str(e))
    print(format_summary(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
