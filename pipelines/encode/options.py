"""Command-line pieces shared by the shard-encoding jobs (precompute_proxy, tokenize_dataset)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .decode_stage import IMAGE_FORMATS, DecodeOptions
from .encode_job import EncodeJobConfig, format_summary, run
from .encode_stage import PRECISIONS, model_identity
from .images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from .storage import fetch_to_cache


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def add_io_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input / output")
    g.add_argument("--input", required=True,
                   help="WebDataset shards: brace pattern ('train-{000000..000320}.tar'), glob, directory or "
                        ".txt list; local path or s3:// gs:// http(s):// file:// URL")
    g.add_argument("--output", required=True, help="output directory (local or URL); one Parquet file per shard")
    g.add_argument("--endpoint-url", default=None,
                   help="custom S3 endpoint (MinIO, SeaweedFS, R2 ...); credentials come from the standard AWS "
                        "environment / config")
    g.add_argument("--overwrite", action="store_true", help="redo shards that are already committed")
    g.add_argument("--max-error-rate", type=float, default=0.05,
                   help="exit non-zero when more than this fraction of samples is quarantined")


def add_image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--views", default="center",
                   help="views per image: center, center-flip, or offsets-K (K crops along the long side x flip)")
    g.add_argument("--resolution", type=int, default=256, help="shorter side after resizing = crop size")
    g.add_argument("--num-classes", type=int, default=1000, help="labels must lie in [0, N)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image (w*h) decoded")
    g.add_argument("--max-aspect-ratio", type=float, default=DEFAULT_MAX_ASPECT_RATIO,
                   help="largest long/short side ratio accepted")


def add_compute_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compute")
    g.add_argument("--workers", type=int, default=1, help="model actors (one model each)")
    g.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor (0: CPU)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per model actor")
    g.add_argument("--decode-cpus", type=float, default=1.0, help="CPUs per decode / write task")
    g.add_argument("--threads", type=int, default=None, help="torch threads inside a model actor")
    g.add_argument("--batch-size", type=int, default=32, help="crops per forward pass")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 on GPU, fp32 on CPU; bf16 reports its agreement with fp32")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, the job's cluster, or a new local one)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.endpoint_url:
        # fsspec / s3fs and anything that reads the standard variable see the same endpoint.
        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
        return {"client_kwargs": {"endpoint_url": args.endpoint_url}}
    return None


def load_job_model(uri: str, option: str):
    """Fetch (once, cached) and load the model in the driver: fails fast with one line if unavailable."""
    from titok_core import load_model
    path = fetch_to_cache(uri, what="model weights", option=option)
    return path, load_model(path)


def init_ray(address: str | None) -> None:
    import ray
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def run_job(args: argparse.Namespace, *, model_uri: str, model_option: str, codes_column: str, keep_image: bool,
            codes_per_view: int, identity: dict[str, Any], image_format: str, input_suffix: str = ".tar",
            verify_fraction: float = 0.0) -> int:
    cfg = EncodeJobConfig(
        input=args.input, output=args.output, model=model_uri, model_option=model_option,
        codes_column=codes_column, keep_image=keep_image, codes_per_view=codes_per_view, metadata=identity,
        views=args.views,
        decode=DecodeOptions(resolution=args.resolution, image_format=image_format, max_pixels=args.max_pixels,
                             max_aspect_ratio=args.max_aspect_ratio, num_classes=args.num_classes),
        workers=args.workers, num_gpus=args.num_gpus, num_cpus=args.cpus_per_worker, decode_cpus=args.decode_cpus,
        threads=args.threads, batch_size=args.batch_size, precision=args.precision,
        max_error_rate=args.max_error_rate, overwrite=args.overwrite, storage_options=storage_options(args),
        input_suffix=input_suffix, verify_fraction=verify_fraction,
    )
    init_ray(args.ray_address)
    summary, code = run(cfg)
    print(format_summary(summary))
    return code


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


__all__ = ["HelpFormatter", "IMAGE_FORMATS", "add_compute_args", "add_image_args", "add_io_args", "fail",
           "load_job_model", "model_identity", "run_job", "setup_logging"]
