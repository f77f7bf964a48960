"""Pack a local image dataset into WebDataset tar shards (local directory or fsspec URL).

    python -m jobs.make_shards SOURCE --output DIR_OR_URL [--labels labels.tsv] ...

Writes `<prefix>-000000.tar ...` plus `<prefix>-manifest.json` (resolved config and shard ->
sample count), all atomically, and prints the manifest. Two runs with the same arguments give
byte-identical shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from pipelines.runtime import JobArgumentParser, positive_int
from pipelines.shards import LAYOUTS, collect_images, pack
from pipelines.storage import check_output, endpoint_options, join_url, write_json_atomic

EXAMPLE = """example:
  python -m jobs.make_shards ../shared/data/imagenet-sample \\
      --labels ../shared/data/imagenet-sample/labels.tsv \\
      --output runs/shards --prefix train --samples-per-shard 64
  -> runs/shards/train-000000.tar ... train-000003.tar, runs/shards/train-manifest.json

sources: an ImageFolder (class sub-directories), a flat directory of <wnid>_*.JPEG files
(with --labels or --synset-list), or a list file of 'path<TAB>label' lines."""


@dataclass(frozen=True)
class MakeShardsConfig:
    """Everything one packing run depends on (saved in the manifest).

    Args:
        source: ImageFolder root, flat directory or `path<TAB>label` list file (local).
        output: directory or URL (s3://, gs://, file://) for the shards.
        layout: auto, imagefolder, flat or list.
        labels: TSV with class_index and file / wnid columns (flat directories).
        synset_list: one wnid per line, label = line number (flat or ImageFolder).
        prefix: shard file name prefix.
        samples_per_shard: samples per tar (1,000 ImageNet JPEGs are about 110 MB).
        shuffle_seed: shuffle the sorted samples with this seed; None keeps key order.
        overwrite: replace shards with this prefix already in `output`.
        endpoint_url: custom S3 endpoint; default AWS_ENDPOINT_URL.
    """

    source: str
    output: str
    layout: str = "auto"
    labels: str | None = None
    synset_list: str | None = None
    prefix: str = "train"
    samples_per_shard: int = 1000
    shuffle_seed: int | None = None
    overwrite: bool = False
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"--samples-per-shard must be >= 1, got {self.samples_per_shard}")
        if self.labels and self.synset_list:
            raise ValueError("pass either --labels or --synset-list, not both")
        if not self.prefix or "/" in self.prefix:
            raise ValueError(f"--prefix must be a plain file name part, got {self.prefix!r}")


def parse_args(argv: list[str] | None) -> MakeShardsConfig:
    p = JobArgumentParser(prog="python -m jobs.make_shards", description=__doc__.split("\n\n")[0],
                          epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="ImageFolder root, flat image directory, or path<TAB>label list file")
    p.add_argument("--output", required=True, help="directory or URL for the shards (s3://bucket/prefix, ...)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="source layout (default: detect)")
    p.add_argument("--labels", help="TSV with a header: class_index plus file and/or wnid columns")
    p.add_argument("--synset-list", help="one wnid per line; label = line number")
    p.add_argument("--prefix", default="train", help="shard names: PREFIX-000000.tar (default: train)")
    p.add_argument("--samples-per-shard", type=positive_int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument("--shuffle-seed", type=int, help="deterministic shuffle of the samples (default: sorted)")
    p.add_argument("--overwrite", action="store_true", help="replace existing PREFIX-*.tar shards in --output")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")
    return MakeShardsConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        options = endpoint_options(cfg.endpoint_url)
        check_output(cfg.output, storage_options=options)
        images = collect_images(cfg.source, cfg.layout, cfg.labels, cfg.synset_list)
        manifest = pack(images, cfg.output, cfg.samples_per_shard, prefix=cfg.prefix,
                        shuffle_seed=cfg.shuffle_seed, overwrite=cfg.overwrite, storage_options=options)
        write_json_atomic(join_url(cfg.output, f"{cfg.prefix}-manifest.json"),
                          {"config": dataclasses.asdict(cfg), "num_samples": len(images), "shards": manifest},
                          options)
    except (ValueError, FileNotFoundError) as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    for name, count in manifest.items():
        print(f"{name}\t{count}")
    print(f"{len(images)} samples in {len(manifest)} shards -> {cfg.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
