"""The whole system end to end on a small real dataset: shards -> proxy codes -> stage 1 -> stage 2 -> tokens
-> a class-conditional generator and its samples -> report.

Runs on the embedded default, offline: a local Ray (CPU, or GPU if there is one), crops of
scikit-image's public-domain sample photos (or your folder with --images) at 32 px, a small teacher
trained here first, and the `demo` model and recipes (the official ones are 256 px and need days of
GPUs; report.md says what differs and why). With --pretrained it instead reconstructs the sample
photos with the released TiTok-L-32 tokenizer, and says what it needs when that cannot be downloaded.

Every step is the real job's `main(argv)`, in one local Ray session. Output in `runs/demo/`:
report.md, reconstructions.png (inputs | reconstructions), samples.png (the generator's), loss_curves.png,
the Parquet datasets, the checkpoints and each job's summary.

examples:
  make demo                          # = python jobs/demo.py --output runs/demo
  make demo IMAGES=~/photos          # your own folder (sub-folders become classes)
  make demo-pretrained               # the released TiTok-L-32 on the sample photos
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from jobs.make_shards import main as make_shards  # noqa: E402
from jobs.precompute_proxy import main as precompute  # noqa: E402
from jobs.sample_generator import main as sample_generator  # noqa: E402
from jobs.tokenize_dataset import main as tokenize  # noqa: E402
from jobs.train_generator import main as train_generator  # noqa: E402
from jobs.train_tokenizer import main as train  # noqa: E402
from pipelines import demo_report, runtime  # noqa: E402
from pipelines.demo_data import write_demo_images  # noqa: E402
from pipelines.demo_generator import demo_classes, generator_argv, sample_argv  # noqa: E402
from pipelines.demo_report import DemoConfig, say  # noqa: E402
from pipelines.demo_teacher import demo_teacher  # noqa: E402


def timed(cfg: DemoConfig, name: str, fn: Callable[[], int]) -> None:
    t0 = time.perf_counter()
    code = fn()
    cfg.timings[name] = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"demo step '{name}' failed with exit code {code}; see the output above")


def run_demo(cfg: DemoConfig) -> Path:
    out = cfg.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    runtime.init_ray(None)
    if cfg.images:
        say(f"1/7 packing your images from {cfg.images} into shards")
        source = [str(demo_report.image_list(cfg.images, out / "images.tsv")), "--layout", "list"]
    else:
        say("1/7 writing crops of scikit-image's public-domain sample photos, packing them into shards")
        source = [str(write_demo_images(out / "images", cfg.photos, cfg.crops))]
    timed(cfg, "make_shards", lambda: make_shards(
        [*source, "--output", str(out / "shards"), "--samples-per-shard", str(cfg.samples_per_shard), "--overwrite"]))

    teacher, teacher_psnr = demo_teacher(cfg, out, Path(source[0]))
    say("2/7 precomputing proxy codes with the teacher (jobs/precompute_proxy.py)")
    timed(cfg, "precompute_proxy", lambda: precompute(
        ["--input", str(out / "shards"), "--output", str(out / "proxy"), "--teacher", teacher, "--resolution",
         str(cfg.resolution), "--views", cfg.views, "--num-classes", "100000", "--batch-size", "16"]))

    steps1 = ["--steps", str(cfg.stage1_steps)] if cfg.stage1_steps else []
    say(f"3/7 stage 1: TiTok learns the proxy codes (jobs/train_tokenizer.py --stage 1 --preset {cfg.preset})")
    timed(cfg, "train_stage1", lambda: train(
        ["--stage", "1", "--preset", cfg.preset, "--data", str(out / "proxy"), "--output", str(out / "stage1"),
         "--teacher", teacher, "--num-workers", str(cfg.workers), *steps1, *demo_report.batch_args(cfg, out, 1)]))

    backbones, perceptual = demo_report.perceptual_backbones(cfg.preset)
    steps2 = ["--steps", str(cfg.stage2_steps)] if cfg.stage2_steps else []
    say(f"4/7 stage 2: decoder fine-tuning on pixels (jobs/train_tokenizer.py --stage 2 --preset {cfg.preset})")
    timed(cfg, "train_stage2", lambda: train(
        ["--stage", "2", "--preset", cfg.preset, "--data", str(out / "proxy"), "--init", str(out / "stage1" / "model"),
         "--output", str(out / "stage2"), "--teacher", teacher, "--num-workers", str(cfg.workers), *steps2,
         *backbones, *demo_report.batch_args(cfg, out, 2)]))

    say("5/7 tokenizing the dataset with the trained tokenizer (jobs/tokenize_dataset.py)")
    timed(cfg, "tokenize", lambda: tokenize(
        ["--input", str(out / "proxy"), "--output", str(out / "tokens"), "--tokenizer", str(out / "stage2" / "model"),
         "--resolution", str(cfg.resolution), "--views", "center-flip", "--verify-fraction", "1", "--num-classes", "100000"]))

    if cfg.generator_steps != 0:
        say("6/7 a class-conditional generator on those tokens, and its samples (jobs/train_generator.py, "
            "jobs/sample_generator.py)")
        timed(cfg, "train_generator", lambda: train_generator(generator_argv(out, cfg.workers, cfg.generator_steps)))
        timed(cfg, "sample_generator", lambda: sample_generator(sample_argv(out, demo_classes(out))))

    say("7/7 writing the report")
    report = demo_report.write_report(cfg, out, teacher_psnr=teacher_psnr, perceptual=perceptual)
    print(demo_report.closing_message(out, report))
    return report


def run_pretrained(output: Path, tokenizer: str | None, photos: int | None, crops: int) -> Path:
    """Reconstruct the sample photos with the released TiTok-L-32 (downloaded once, cached)."""
    from titok_core import OFFICIAL_URLS, TiTokReleased
    out = output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        model = runtime.load_model_uri(tokenizer or OFFICIAL_URLS["L-32"], option="--tokenizer",
                                       what="TiTok-L-32 tokenizer", kinds=(TiTokReleased,)).model
    except RuntimeError as e:
        raise RuntimeError(
            f"{e}. The pretrained demo needs the released tokenizer_titok_l32.bin (2.6 GB): network access to "
            f"huggingface.co, or download it elsewhere and run: make demo-pretrained TOKENIZER=/path/to/"
            "tokenizer_titok_l32.bin") from None
    grid, psnr, n = demo_report.reconstruct_photos(model, out, photos, crops)
    both = demo_report.attach_comparison(out)  # next to `make demo`'s tokenizer when that ran too
    print(demo_report.pretrained_message(model.config.num_latent_tokens, n, psnr, grid, both))
    return grid


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = runtime.JobArgumentParser(prog="demo.py", description=__doc__)
    p.add_argument("--output", type=Path, default=Path("runs/demo"), help="where everything goes")
    p.add_argument("--images", type=Path, default=None, help="your own image folder instead of the sample photos")
    p.add_argument("--photos", type=int, default=None, help="use only the first N sample photos")
    p.add_argument("--crops", type=int, default=4, help="crops per sample photo")
    p.add_argument("--stage1-steps", type=int, default=None, help="override the demo stage-1 recipe's steps")
    p.add_argument("--stage2-steps", type=int, default=None, help="override the demo stage-2 recipe's steps")
    p.add_argument("--generator-steps", type=int, default=None, help="override the demo generator's steps (0: no generator step)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--pretrained", action="store_true", help="reconstruct the sample photos with the released L-32")
    p.add_argument("--tokenizer", default=None, help="with --pretrained: a local tokenizer_titok_l32.bin")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    runtime.setup_logging()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        args = parse_args(argv)
        if args.pretrained:
            run_pretrained(args.output, args.tokenizer, args.photos, args.crops)
            return 0
        if args.images is not None and not args.images.is_dir():
            return runtime.fail(f"--images {args.images} is not a folder")
        run_demo(DemoConfig(output=args.output, images=args.images, photos=args.photos, crops=args.crops,
                            stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                            generator_steps=args.generator_steps, workers=args.workers))
        return 0
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        return runtime.fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
