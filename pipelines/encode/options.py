"""Command-line options shared by the shard-encoding jobs (precompute_proxy, tokenize_dataset), and
the step from parsed options to a run of `pipelines.encode.job`."""

from __future__ import annotations

import argparse
from typing import Any

from .. import schema as S
from ..preprocess import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_PIXELS,
    DEFAULT_STORED_IMAGE_FORMAT,
    STORED_IMAGE_FORMATS,
    view_specs,
)
from ..runtime import fraction, non_negative_float, positive_float, positive_int, view_set
from ..storage import check_output, endpoint_options, get_fs
from .decode import DecodeOptions
from .job import EncodeJobConfig, format_summary, run
from .model import INFERENCE_PRECISIONS


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
    g.add_argument("--max-error-rate", type=fraction, default=0.05,
                   help="exit non-zero when more than this fraction of samples is quarantined")


INPUT_FORMATS = {"shards": ".tar", "proxy": ".parquet"}


def add_input_format_arg(p: argparse.ArgumentParser) -> None:
    """--input-format, for jobs that read WebDataset shards or a proxy dataset's stored pixels."""
    p.add_argument("--input-format", choices=["auto", *INPUT_FORMATS], default="auto",
                   help="shards: WebDataset .tar; proxy: a proxy-code dataset's .parquet files; auto: by the spec")


def input_suffix(spec: str, fmt: str) -> str:
    """The input files' suffix: `fmt`'s, or for "auto" .parquet when `spec` names or holds Parquet files."""
    if fmt != "auto":
        return INPUT_FORMATS[fmt]
    return ".parquet" if ".parquet" in spec or _has_parquet(spec) else ".tar"


def _has_parquet(spec: str) -> bool:
    try:
        fs, path = get_fs(spec)
        return fs.isdir(path) and bool(fs.glob(path.rstrip("/") + "/*.parquet"))
    except Exception:
        return False


def add_image_args(p: argparse.ArgumentParser, views: bool = True) -> None:
    """Image options; `views=False` for a job with one fixed view (evaluation: the centre crop)."""
    g = p.add_argument_group("images")
    if views:
        g.add_argument("--views", type=view_set, default="center",
                       help="views per image: center, center-flip, or offsets-K (K crops along the long side x flip)")
    g.add_argument("--resolution", type=positive_int, default=256, help="shorter side after resizing = crop size")
    g.add_argument("--num-classes", type=positive_int, default=1000, help="labels must lie in [0, N)")
    g.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="largest image (w*h) decoded")
    g.add_argument("--max-aspect-ratio", type=aspect_ratio, default=DEFAULT_MAX_ASPECT_RATIO,
                   help="largest long/short side ratio accepted")


def add_compute_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compute")
    g.add_argument("--workers", type=positive_int, default=1, help="model actors (one model each)")
    g.add_argument("--num-gpus", type=non_negative_float, default=0.0, help="GPUs per model actor (0: CPU)")
    g.add_argument("--cpus-per-worker", type=positive_float, default=1.0, help="CPUs reserved per model actor")
    g.add_argument("--decode-cpus", type=positive_float, default=1.0, help="CPUs per decode task")
    g.add_argument("--threads", type=positive_int, default=None, help="torch threads inside a model actor")
    g.add_argument("--batch-size", type=positive_int, default=32, help="crops per forward pass")
    g.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="auto",
                   help="auto = bf16 on GPU, fp32 on CPU; bf16 reports its agreement with fp32")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, the job's cluster, or a new local one)")


def aspect_ratio(text: str) -> float:
    """argparse `type` for --max-aspect-ratio: a number >= 1."""
    value = positive_float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1 (long side / short side)")
    return value


def check_args(args: argparse.Namespace) -> None:
    """What can be checked before any model is loaded or Ray starts: the output is writable.

    Raises:
        ValueError: one line naming the option and the fix.
    """
    check_output(args.output, storage_options=endpoint_options(args.endpoint_url))


def dataset_metadata(args: argparse.Namespace, *, codes_per_view: int, image_format: str | None,
                     **model: Any) -> S.DatasetMetadata:
    """The metadata of the dataset the job writes; `model`: teacher= / tokenizer= identity and codebook size."""
    return S.DatasetMetadata(views=args.views, view_specs=tuple(view_specs(args.views)), crop_size=args.resolution,
                             codes_per_view=codes_per_view, image_format=image_format, **model)


def encode_config(args: argparse.Namespace, *, model_uri: str, model_option: str, dataset: S.DatasetMetadata,
                  input_suffix: str = ".tar", verify_fraction: float = 0.0) -> EncodeJobConfig:
    """The shard job's config from parsed options (`add_io_args`, `add_image_args`, `add_compute_args`)."""
    return EncodeJobConfig(
        input=args.input, output=args.output, model=model_uri, model_option=model_option, dataset=dataset,
        decode=DecodeOptions(resolution=args.resolution, image_format=dataset.image_format or "none",
                             max_pixels=args.max_pixels, max_aspect_ratio=args.max_aspect_ratio,
                             num_classes=args.num_classes),
        workers=args.workers, num_gpus=args.num_gpus, num_cpus=args.cpus_per_worker, decode_cpus=args.decode_cpus,
        threads=args.threads, batch_size=args.batch_size, precision=args.precision,
        max_error_rate=args.max_error_rate, overwrite=args.overwrite,
        storage_options=endpoint_options(args.endpoint_url),
        input_suffix=input_suffix, verify_fraction=verify_fraction,
    )


def run_job(args: argparse.Namespace, *, model_uri: str, model_option: str, dataset: S.DatasetMetadata,
            input_suffix: str = ".tar", verify_fraction: float = 0.0) -> int:
    cfg = encode_config(args, model_uri=model_uri, model_option=model_option, dataset=dataset,
                        input_suffix=input_suffix, verify_fraction=verify_fraction)
    summary, code = run(cfg, args.ray_address)
    print(format_summary(summary))
    return code


__all__ = ["DEFAULT_STORED_IMAGE_FORMAT", "INPUT_FORMATS", "STORED_IMAGE_FORMATS", "add_compute_args",
           "add_image_args", "add_input_format_arg", "add_io_args", "check_args", "dataset_metadata", "encode_config",
           "input_suffix", "run_job"]
