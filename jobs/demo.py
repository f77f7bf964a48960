"""The whole system end to end on a small real dataset: shards -> proxy codes -> stage 1 -> stage 2 -> tokens -> report.

Runs on the embedded default: a local Ray (CPU, or GPU if there is one), the `debug` model and
crops of scikit-image's public-domain sample photos (or your folder with --images). The official
MaskGIT-VQGAN teacher is used when it can be downloaded (cached); offline, a small random teacher
stands in and the report says so. With --pretrained it instead reconstructs the sample photos with
the released TiTok-L-32 tokenizer, and says what it needs when that cannot be downloaded.

examples:
  make demo                          # = python jobs/demo.py --output runs/demo
  make demo IMAGES=~/photos          # your own folder (sub-folders become classes)
  make demo-pretrained               # the released TiTok-L-32 on the sample photos
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines import cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--output", type=Path, default=Path("runs/demo"), help="where everything goes")
    p.add_argument("--images", type=Path, default=None, help="your own image folder instead of the sample photos")
    p.add_argument("--photos", type=int, default=None, help="use only the first N sample photos")
    p.add_argument("--crops", type=int, default=4, help="crops per sample photo")
    p.add_argument("--stage1-steps", type=int, default=None, help="override the debug stage-1 recipe's steps")
    p.add_argument("--stage2-steps", type=int, default=None, help="override the debug stage-2 recipe's steps")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--pretrained", action="store_true", help="reconstruct the sample photos with the released L-32")
    p.add_argument("--tokenizer", default=None, help="with --pretrained: a local tokenizer_titok_l32.bin")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if args.pretrained:
            from pipelines.demo import run_pretrained
            run_pretrained(args.output, args.tokenizer, args.photos, args.crops)
            return 0
        from pipelines.demo import DemoConfig, run_demo
        if args.images is not None and not args.images.is_dir():
            return cli.fail(f"--images {args.images} is not a folder")
        run_demo(DemoConfig(output=args.output, images=args.images, photos=args.photos, crops=args.crops,
                            stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, workers=args.workers))
        return 0
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        return cli.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
