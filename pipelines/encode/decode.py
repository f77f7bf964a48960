"""CPU stage: one input shard -> its usable samples as base images, plus quarantine records.

A shard travels through the pipeline as ONE row (lists of per-sample values), so it is never
split across blocks: the unit of work is also the unit of commit.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from .images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, decode_and_preprocess
from .quarantine import UNREADABLE_SHARD, SampleError, SampleErrorRecord, one_line
from .tar_reader import Sample, iter_samples

IMAGE_FORMATS = ("png", "jpeg")


@dataclass(frozen=True)
class DecodeOptions:
    """How images become base images.

    Args:
        resolution: shorter side after the resize (= crop size).
        image_format: how the base image is stored: "png" (lossless) or "jpeg" (quality
            `jpeg_quality`; the stored JPEG is decoded again and *those* pixels go to the model, so
            codes always match what a reader of the stored bytes gets). "none": not stored.
        max_pixels / max_aspect_ratio: header checks before decoding (see pipelines.images).
        num_classes: labels must be in [0, num_classes); None accepts any non-negative label.
    """

    resolution: int = 256
    image_format: str = "png"
    jpeg_quality: int = 95
    png_compress_level: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    num_classes: int | None = 1000

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS + ("none",):
            raise ValueError(f"image_format {self.image_format!r}: use png, jpeg or none")


def encode_base_image(pixels: np.ndarray, opts: DecodeOptions) -> tuple[bytes, np.ndarray]:
    """Store the base image; returns (bytes, the pixels a reader of those bytes decodes)."""
    if opts.image_format == "none":
        return b"", pixels
    buf = io.BytesIO()
    if opts.image_format == "png":
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=opts.png_compress_level)
        return buf.getvalue(), pixels
    Image.fromarray(pixels).save(buf, format="JPEG", quality=opts.jpeg_quality, subsampling=0)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


_COLUMNS = ("keys", "labels", "sources", "members", "images", "pixels", "heights", "widths")


def _append(out: dict[str, list], key: str, label: int, source: str, member: str, stored: bytes,
            pixels: np.ndarray) -> None:
    for name, value in zip(_COLUMNS, (key, label, source, member, stored, np.ascontiguousarray(pixels).tobytes(),
                                      pixels.shape[0], pixels.shape[1])):
        out[name].append(value)


def decode_shard(row: dict[str, Any], opts: DecodeOptions, storage_options: dict | None = None) -> dict[str, Any]:
    """{"shard": url, "name": stem} -> the shard row the model stage consumes.

    Output lists (one entry per usable sample): keys, labels, sources, members, images (stored
    bytes), pixels (raw HWC uint8 bytes), heights, widths. `errors`: JSON quarantine records.
    `failed`: the shard could not be read at all (transient or missing): it will not be committed.
    """
    if row["shard"].endswith(".parquet"):
        return decode_proxy_file(row, opts, storage_options)
    out: dict[str, list] = {k: [] for k in _COLUMNS}
    errors: list[str] = []
    failed = False
    for item in iter_samples(row["shard"], storage_options=storage_options, num_classes=opts.num_classes):
        if isinstance(item, SampleErrorRecord):
            errors.append(json.dumps(asdict(item)))
            failed |= item.reason == UNREADABLE_SHARD
            continue
        sample: Sample = item
        try:
            pixels = decode_and_preprocess(sample.image, resolution=opts.resolution, max_pixels=opts.max_pixels,
                                           max_aspect_ratio=opts.max_aspect_ratio)
        except SampleError as e:
            errors.append(json.dumps(asdict(e.to_record(sample.key, sample.shard, sample.member))))
            continue
        stored, pixels = encode_base_image(pixels, opts)
        _append(out, sample.key, sample.label, sample.shard, sample.member, stored, pixels)
    return {**row, **out, "errors": errors, "failed": failed}


def decode_proxy_file(row: dict[str, Any], opts: DecodeOptions, storage_options: dict | None = None) -> dict[str, Any]:
    """One Parquet file of a proxy-code dataset -> the same shard row, from its stored base images.

    The stored pixels are used as they are (no second resize), so tokens are computed on exactly
    the pixels the proxy codes were; keys, labels and sources carry over.
    """
    import pyarrow.parquet as pq

    from . import schema as S
    from .quarantine import UNDECODABLE
    from .storage import get_fs

    out: dict[str, list] = {k: [] for k in _COLUMNS}
    errors: list[str] = []

    def error(key: str, member: str, reason: str, detail: str) -> None:
        errors.append(json.dumps(asdict(SampleErrorRecord(key, row["shard"], member, reason, detail))))

    try:
        fs, path = get_fs(row["shard"], storage_options=storage_options)
        table = pq.read_table(path, filesystem=fs, columns=[S.KEY, S.LABEL, S.SOURCE_SHARD, S.SOURCE_MEMBER, S.IMAGE])
    except Exception as e:  # missing, unreadable or not a proxy dataset file
        error("", "", UNREADABLE_SHARD, one_line(e))
        return {**row, **out, "errors": errors, "failed": True}
    for rec in table.to_pylist():
        try:
            pixels = np.asarray(Image.open(io.BytesIO(rec[S.IMAGE])).convert("RGB"))
        except Exception as e:
            error(rec[S.KEY], rec[S.SOURCE_MEMBER], UNDECODABLE, one_line(e))
            continue
        if min(pixels.shape[:2]) != opts.resolution:
            error(rec[S.KEY], rec[S.SOURCE_MEMBER], UNDECODABLE,
                  f"stored image is {pixels.shape[1]}x{pixels.shape[0]}, its short side is not {opts.resolution}")
            continue
        _append(out, rec[S.KEY], rec[S.LABEL], rec[S.SOURCE_SHARD], rec[S.SOURCE_MEMBER], b"", pixels)
    return {**row, **out, "errors": errors, "failed": False}
