"""CPU stage: one input file -> its usable samples as base images, plus quarantine records.

    tar shard        iter_samples (quarantine every defect) -> decode_and_preprocess -> the base image,
                     stored (PNG / JPEG) when the dataset keeps it
    proxy .parquet   the stored base images of a proxy dataset, as they are (tokenize a proxy dataset)

Returns a `schema.DecodedShard`: a shard is never split, it is the unit of work and of commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from .. import schema as S
from ..preprocess import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_PIXELS,
    DEFAULT_STORED_IMAGE_FORMAT,
    STORED_IMAGE_FORMATS,
    decode_and_preprocess,
    decode_stored_image,
    encode_stored_image,
)
from ..quarantine import UNDECODABLE, UNREADABLE_SHARD, SampleError, SampleErrorRecord, one_line
from ..storage import get_fs
from ..tar_reader import iter_samples


@dataclass(frozen=True)
class DecodeOptions:
    """How images become base images.

    Args:
        resolution: shorter side after the resize (= crop size).
        image_format: how the base image is stored: "zstd" or "png" (lossless) or "jpeg" (see
            `preprocess.encode_stored_image`: the model sees the decoded JPEG, so codes always match
            what a reader of the stored bytes gets); "none": not stored.
        max_pixels / max_aspect_ratio: header checks before decoding (see pipelines.preprocess).
        num_classes: labels must be in [0, num_classes); None accepts any non-negative label.
    """

    resolution: int = 256
    image_format: str = DEFAULT_STORED_IMAGE_FORMAT
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    num_classes: int | None = 1000

    def __post_init__(self) -> None:
        if self.image_format not in STORED_IMAGE_FORMATS + ("none",):
            raise ValueError(f"image_format {self.image_format!r}: use png, jpeg or none")


def decode_shards(batch: pa.Table, opts: DecodeOptions, storage_options: dict | None = None) -> pa.Table:
    """Ray Data stage: plan rows (`schema.SHARD_INPUT`: url, name) -> `DecodedShard` rows."""
    return S.DecodedShard.to_table([decode_shard(row["shard"], row["name"], opts, storage_options)
                                    for row in batch.select(list(S.SHARD_INPUT)).to_pylist()])


def decode_shard(url: str, name: str, opts: DecodeOptions, storage_options: dict | None = None) -> S.DecodedShard:
    """One input file (a tar shard, or a proxy dataset's Parquet file) -> its usable samples and quarantine records."""
    if url.endswith(".parquet"):
        return decode_proxy_file(url, name, opts, storage_options)
    out = S.DecodedShard(url, name)
    for item in iter_samples(url, storage_options=storage_options, num_classes=opts.num_classes):
        if isinstance(item, SampleErrorRecord):
            out.errors.append(item)
            out.failed |= item.reason == UNREADABLE_SHARD
            continue
        try:
            pixels = decode_and_preprocess(item.image, resolution=opts.resolution, max_pixels=opts.max_pixels,
                                           max_aspect_ratio=opts.max_aspect_ratio)
        except SampleError as e:
            out.errors.append(e.to_record(item.key, item.shard, item.member))
            continue
        stored = b""
        if opts.image_format != "none":
            stored, pixels = encode_stored_image(pixels, opts.image_format)
        out.add(item.key, item.label, item.shard, item.member, stored, pixels)
    return out


def check_proxy_input(spec: str, resolution: int, storage_options: dict | None = None) -> S.DatasetMetadata:
    """The metadata of the proxy dataset named by `spec`, checked before any work starts.

    Raises:
        ValueError: one line if `spec` names no Parquet files, files no precompute job wrote (e.g. a
            token dataset), or crops of another size than `resolution`.
    """
    import pyarrow.parquet as pq

    from ..storage import expand_inputs
    first = expand_inputs(spec, storage_options, suffix=".parquet")[0]
    fs, path = get_fs(first, storage_options=storage_options)
    try:
        with fs.open(path, "rb") as f:
            meta = S.DatasetMetadata.from_schema(pq.ParquetFile(f).schema_arrow)
    except Exception as e:
        raise ValueError(f"--input {spec}: {first} is not a readable Parquet file ({one_line(e)})") from None
    if meta is None:
        raise ValueError(f"--input {spec}: {first} was not written by jobs/precompute_proxy.py (no titok metadata); "
                         "give WebDataset shards or a proxy-code dataset")
    if meta.image_format is None:
        raise ValueError(f"--input {spec} is a token dataset (codes of a {meta.model.kind}, no stored images); "
                         "give WebDataset shards or a proxy-code dataset written by jobs/precompute_proxy.py")
    if meta.crop_size != resolution:
        raise ValueError(f"--input {spec} holds {meta.crop_size}-pixel crops but --resolution is {resolution}; "
                         f"pass --resolution {meta.crop_size} (and a tokenizer of that image size)")
    return meta


def decode_proxy_file(url: str, name: str, opts: DecodeOptions, storage_options: dict | None = None) -> S.DecodedShard:
    """One Parquet file of a proxy-code dataset -> its samples, from the stored base images.

    The stored pixels are used as they are (no second resize), so tokens are computed on exactly
    the pixels the proxy codes were; keys, labels and sources carry over.
    """
    import pyarrow.parquet as pq

    out = S.DecodedShard(url, name)
    try:
        fs, path = get_fs(url, storage_options=storage_options)
        table = pq.read_table(path, filesystem=fs, columns=[S.KEY, S.LABEL, S.SOURCE_SHARD, S.SOURCE_MEMBER, S.IMAGE])
    except Exception as e:  # missing, unreadable or not a proxy dataset file
        out.errors.append(SampleErrorRecord("", url, "", UNREADABLE_SHARD, one_line(e)))
        out.failed = True
        return out
    for rec in table.to_pylist():
        try:
            pixels = decode_stored_image(rec[S.IMAGE])
        except Exception as e:
            out.errors.append(SampleErrorRecord(rec[S.KEY], url, rec[S.SOURCE_MEMBER], UNDECODABLE, one_line(e)))
            continue
        if min(pixels.shape[:2]) != opts.resolution:
            out.errors.append(SampleErrorRecord(
                rec[S.KEY], url, rec[S.SOURCE_MEMBER], UNDECODABLE,
                f"stored image is {pixels.shape[1]}x{pixels.shape[0]}, its short side is not {opts.resolution}"))
            continue
        out.add(rec[S.KEY], rec[S.LABEL], rec[S.SOURCE_SHARD], rec[S.SOURCE_MEMBER], b"", pixels)
    return out
