"""The evaluation job (Ray Data) vs a plain single-process loop doing the same metric work, same images.

    python benchmarks/evaluate_job.py [--images 32] [--repeats 3] [--features random|inception] [--no-lpips]

Both sides: a debug-size TiTok (released form, random weights), 256x256 centre crops of real
ImageNet JPEGs, fp32, batch 8; per image encode -> decode -> uint8, PSNR, SSIM, LPIPS-VGG (random
backbone, loaded from a file through the job's real LPIPS path) and FID features of the input and
the reconstruction, then FID, codebook usage and perplexity. Feature network: `random` (default) is
the small random conv net of --random-features, so that a CPU run takes minutes; `inception` is the
real Inception-v3 architecture in float64 with random weights (about 1 s per image per side here).
The plain loop writes nothing; the job reads tar shards and writes per-image Parquet, per-shard
statistics and commit records, metrics.json / .md and the grids. Medians; the ratio is printed last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import torch
import torchvision

from common import CenterCrops, make_workdir, report, sample_images, side_by_side, timed_job
from jobs.evaluate_tokenizer import main as evaluate
from pipelines.evaluate.features import FeatureSpec, build_feature_net, frechet_distance
from pipelines.evaluate.measure import ssim
from pipelines.preprocess import to_uint8
from titok_core import PRESETS, MaskGITVQGAN, ProxyPixelDecoder, TiTokReleased, save_pretrained
from titok_core.losses import PerceptualLoss
from titok_core.metrics import FeatureMoments, codebook_stats, psnr


def plain_loop(paths: list[str], model: torch.nn.Module, features: FeatureSpec, lpips: PerceptualLoss | None,
               batch_size: int) -> float:
    """The same metric work in one process: DataLoader with 1 decoding worker, everything else inline."""
    t0 = time.perf_counter()
    net = build_feature_net(features)
    real_m, fake_m = FeatureMoments.zeros(features.dim), FeatureMoments.zeros(features.dim)
    counts = torch.zeros(model.config.codebook_size, dtype=torch.int64)
    scores = []
    loader = torch.utils.data.DataLoader(CenterCrops(paths), batch_size=batch_size, num_workers=1)
    with torch.inference_mode():
        for real in loader:  # (B, 3, H, W) uint8
            tokens = model.encode(real.float() / 255)
            fake = torch.from_numpy(to_uint8(model.decode_tokens(tokens, clamp=True))).permute(0, 3, 1, 2)
            scores.append((psnr(real, fake, reduction="none", max_value=255.0), ssim(real, fake),
                           lpips(fake.float() / 255, real.float() / 255, reduction="none") if lpips else None))
            real_m.update(net(real))
            fake_m.update(net(fake))
            counts += torch.bincount(tokens.reshape(-1), minlength=len(counts))
    frechet_distance(*real_m.mean_and_covariance(), *fake_m.mean_and_covariance())
    codebook_stats(counts)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--features", choices=["random", "inception"], default="random")
    ap.add_argument("--no-lpips", action="store_true")
    args = ap.parse_args()
    images = sample_images(args.images)
    work = make_workdir(images)
    torch.manual_seed(0)
    cfg = PRESETS["debug"]
    model = TiTokReleased(cfg, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(cfg.pixel_vqgan))).eval()
    save_pretrained(model, work / "tokenizer")
    argv = ["--input", str(work / "shards"), "--tokenizer", str(work / "tokenizer"), "--batch-size",
            str(args.batch_size), "--threads", str(torch.get_num_threads())]
    if args.features == "random":
        features = FeatureSpec.random()
        argv.append("--random-features")
    else:
        inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                    num_classes=1008)
        torch.save(inception.state_dict(), work / "inception.pth")
        features = FeatureSpec.inception(str(work / "inception.pth"))
        argv += ["--inception-weights", str(work / "inception.pth")]
    lpips = None
    if args.no_lpips:
        argv.append("--no-lpips")
    else:
        torch.save(PerceptualLoss(pretrained=False).lpips.state_dict(), work / "lpips.pth")
        lpips = PerceptualLoss(weights=str(work / "lpips.pth"))
        argv += ["--lpips-weights", str(work / "lpips.pth")]
    job_s, loop_s = side_by_side(
        len(images), args.repeats,
        job=lambda: timed_job(evaluate, argv, work / "out"),
        loop=lambda: plain_loop([im.path for im in images], model, features, lpips, args.batch_size))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    what = "random small feature net" if args.features == "random" else "Inception-v3 fp64 (random weights)"
    report(f"{len(images)} real ImageNet JPEGs, TiTok debug (random weights), 256x256, batch {args.batch_size}, fp32; "
           f"FID features: {what}; LPIPS: {'off' if args.no_lpips else 'VGG, random backbone'}; "
           f"torch {torch.__version__}, median of {args.repeats}; load average {load}", len(images), job_s, loop_s)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
