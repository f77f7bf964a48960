"""Command-line options of jobs/sample_generator.py, and the step from parsed options to a checked
`SampleJobConfig`: every mistake is one line (ValueError / FileNotFoundError / RuntimeError) before
Ray starts or anything is written."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from titok_core import GENERATOR_PRESETS, SAMPLING_PRESETS, BertGenerator, TiTokReleased, UViTGenerator

from ..evaluate.features import INCEPTION_FILES, FeatureSpec
from ..evaluate.report import Reference, load_generation_reference
from ..runtime import load_model_uri, model_identity, non_negative_float, positive_float, positive_int
from ..storage import check_output, endpoint_options, is_local, local_path
from .job import SampleJobConfig
from .model import SAMPLING_PRECISIONS
from .plan import parse_classes

# The paper's sampling settings by the generator's token count (its size).
PRESET_BY_TOKENS = {32: "L-32", 64: "B-64", 128: "S-128"}


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and output")
    g.add_argument("--generator", required=True,
                   help="generator: <train_generator output>/model, an official generator_titok_*.bin or hf:// name")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer in its released form, decodes the tokens (default: the one the generator was "
                        "trained on, as its model/config.json records)")
    g.add_argument("--output", required=True, help="output directory (local or URL): PNGs, chunk files, the npz")
    g.add_argument("--endpoint-url", default=None, help="custom S3 endpoint (MinIO, SeaweedFS, R2 ...)")
    g.add_argument("--overwrite", action="store_true", help="delete an earlier run's samples in --output and start over")
    g = p.add_argument_group("what to generate (fixes every image)")
    g.add_argument("--classes", default="all", help="'all' (the generator's classes) or labels and ranges: 0-99,207")
    g.add_argument("--per-class", type=positive_int, default=50, help="images per class (the paper: 50)")
    g.add_argument("--seed", type=int, default=42, help="each chunk's generator is seeded from (seed, chunk index)")
    g.add_argument("--classes-per-chunk", type=positive_int, default=4,
                   help="classes per unit of work and commit (a killed run redoes at most the chunks in flight)")
    g = p.add_argument_group("sampling (default: the paper's preset for the generator's size)")
    g.add_argument("--sampling-preset", choices=sorted(SAMPLING_PRESETS), default=None,
                   help="the paper's settings of a size (default: by token count, 32: L-32, 64: B-64, 128: S-128)")
    g.add_argument("--steps", type=positive_int, default=None, help="sampling steps")
    g.add_argument("--guidance-scale", type=non_negative_float, default=None, help="classifier-free guidance scale")
    g.add_argument("--guidance-decay", choices=("constant", "linear", "power-cosine"), default=None,
                   help="guidance schedule over the steps")
    g.add_argument("--guidance-pow", type=positive_float, default=None, help="power of the power-cosine schedule")
    g.add_argument("--randomize-temperature", type=non_negative_float, default=None,
                   help="Gumbel-noise temperature at the first step (annealed to 0)")
    g.add_argument("--softmax-annealing", choices=("on", "off"), default=None,
                   help="softmax-temperature annealing (the official evaluation: on)")
    g = p.add_argument_group("compute")
    g.add_argument("--workers", type=positive_int, default=1, help="model actors (a generator and a tokenizer each)")
    g.add_argument("--num-gpus", type=non_negative_float, default=0.0, help="GPUs per model actor (0: CPU)")
    g.add_argument("--cpus-per-worker", type=positive_float, default=1.0, help="CPUs reserved per model actor")
    g.add_argument("--write-cpus", type=positive_float, default=1.0, help="CPUs per write task (PNG encoding)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per model actor (default: int(--cpus-per-worker))")
    g.add_argument("--batch-size", type=positive_int, default=100, help="images per generate call")
    g.add_argument("--precision", choices=SAMPLING_PRECISIONS, default="auto",
                   help="auto: the official fp32 (TF32 matmuls on GPU); fp32: no TF32; bf16: autocast")
    g = p.add_argument_group("gFID and Inception Score (computed once every chunk is committed)")
    g.add_argument("--reference-stats", default=None, metavar="NPZ",
                   help="reference statistics: an ADM reference batch (e.g. VIRTUAL_imagenet256_labeled.npz, its "
                        "mu / sigma: the paper's gFID) or an npz the evaluation job saved with "
                        "--save-reference-stats; path, URL or s3://. Writes metrics.json")
    g.add_argument("--inception-weights", default=None,
                   help=f"FID Inception-v3 weights ({INCEPTION_FILES[1]}); path, URL or s3://. Default: the "
                        "library's cache under TORCH_HOME (hub/checkpoints), else a download")
    g.add_argument("--random-features", action="store_true",
                   help="smoke tests only: a small random feature network instead of Inception (reported as "
                        "fid_random_features / is_random_features, never as gFID / IS)")
    g = p.add_argument_group("cluster")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, the job's cluster, or a new local one)")


def sampling_config(args: argparse.Namespace, num_latent_tokens: int) -> dict[str, Any]:
    """The preset (given, or the one of the generator's size) with the explicit settings applied."""
    preset = args.sampling_preset or PRESET_BY_TOKENS.get(num_latent_tokens)
    if preset is None:
        raise ValueError(f"no paper sampling preset for a {num_latent_tokens}-token generator: pass --sampling-preset")
    changes = {"num_sample_steps": args.steps, "guidance_scale": args.guidance_scale,
               "guidance_decay": args.guidance_decay, "guidance_scale_pow": args.guidance_pow,
               "randomize_temperature": args.randomize_temperature,
               "softmax_temperature_annealing": None if args.softmax_annealing is None else args.softmax_annealing == "on"}
    return dataclasses.replace(SAMPLING_PRESETS[preset], **{k: v for k, v in changes.items() if v is not None}).to_dict()


def paper_size(generator) -> str | None:
    """The paper's generator size whose architecture this generator has (label dropout aside)."""
    for name in PRESET_BY_TOKENS.values():
        ref = GENERATOR_PRESETS[name]
        if type(ref) is type(generator.config) and \
                dataclasses.replace(ref, label_dropout=generator.config.label_dropout) == generator.config:
            return name
    return None


def feature_args(args: argparse.Namespace, storage_options: dict | None) -> tuple[FeatureSpec | None, Reference | None]:
    """--reference-stats with its feature network, checked against each other (one-line errors)."""
    if args.reference_stats is None:
        if args.random_features or args.inception_weights:
            raise ValueError("--random-features / --inception-weights choose the network of gFID and IS: they need "
                             "--reference-stats")
        return None, None
    if args.random_features and args.inception_weights:
        raise ValueError("--random-features replaces the Inception network: drop --inception-weights")
    features = FeatureSpec.random() if args.random_features else FeatureSpec.inception(args.inception_weights)
    return features, load_generation_reference(args.reference_stats, features, storage_options)


def training_record(path: str) -> dict[str, Any]:
    """The `training` record of our generator directory (empty for official files)."""
    config = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.isfile(config):
        return {}
    try:
        return json.loads(open(config).read()).get("training") or {}
    except (ValueError, AttributeError):
        return {}


def resolve(args: argparse.Namespace) -> SampleJobConfig:
    """Parsed options -> a checked run (loads both models once to check and identify them)."""
    storage_options = endpoint_options(args.endpoint_url)
    check_output(args.output, storage_options=storage_options)
    # Ray workers do not share the driver's working directory: local paths must be absolute.
    for name in ("generator", "tokenizer", "output", "inception_weights"):
        value = getattr(args, name)
        if value is not None and is_local(value):
            setattr(args, name, local_path(value))
    features, reference = feature_args(args, storage_options)
    gen_path, generator = load_model_uri(args.generator, option="--generator", what="generator weights",
                                         kinds=(BertGenerator, UViTGenerator))
    record = training_record(gen_path)
    tokenizer_uri = args.tokenizer or record.get("tokenizer_source")
    if tokenizer_uri is None:
        raise ValueError(f"--generator {args.generator} records no tokenizer: pass --tokenizer (the one its tokens "
                         "came from, e.g. hf://yucornetto/tokenizer_titok_l32_imagenet for the official L-32)")
    tok_path, tokenizer = load_model_uri(tokenizer_uri, option="--tokenizer", what="tokenizer weights",
                                         kinds=(TiTokReleased,))
    g, t = generator.config, tokenizer.config
    for what, a, b in (("codebook size", g.codebook_size, t.codebook_size),
                       ("tokens per image", g.num_latent_tokens, t.num_latent_tokens)):
        if a != b:
            raise ValueError(f"--tokenizer {tokenizer_uri} has {what} {b}, the generator {a}: pass the tokenizer "
                             "the generator was trained with")
    tokenizer_identity = model_identity(tokenizer_uri, tokenizer)
    want = record.get("tokenizer_sha256")
    if want and tokenizer_identity["weights_sha256"] != want:
        raise ValueError(f"--tokenizer {tokenizer_uri} is not the tokenizer the generator was trained on (weights sha256 "
                         f"differs from {want[:12]}..., recorded from {record.get('tokenizer_source')})")
    size = paper_size(generator)
    sampling = sampling_config(args, g.num_latent_tokens)
    return SampleJobConfig(
        generator=args.generator, tokenizer=tokenizer_uri, output=args.output, sampling=sampling, classes=parse_classes(args.classes, g.num_classes),
        per_class=args.per_class, num_classes=g.num_classes,
        generator_identity=model_identity(args.generator, generator), tokenizer_identity=tokenizer_identity,
        seed=args.seed, classes_per_chunk=args.classes_per_chunk, batch_size=args.batch_size,
        precision=args.precision, workers=args.workers, num_gpus=args.num_gpus, num_cpus=args.cpus_per_worker,
        write_cpus=args.write_cpus, threads=args.threads or max(1, int(args.cpus_per_worker)),
        overwrite=args.overwrite, storage_options=storage_options, features=features, reference=reference,
        paper_size=size, paper_sampling=size is not None and sampling == SAMPLING_PRESETS[size].to_dict())
