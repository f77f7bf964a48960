"""Every column the jobs write, and their pyarrow schemas, in one place.

Proxy-code dataset (jobs/precompute_proxy.py), one row per image, one file per input shard:
    key            string     WebDataset sample key
    label          int32      class index from the `.cls` member
    source_shard   string     URL of the input shard
    source_member  string     tar member the image came from
    image          binary     the preprocessed base image (shorter side = crop size), PNG (lossless)
                              or JPEG; its *decoded* pixels are exactly what the teacher saw
    image_format   string     "png" or "jpeg"
    height, width  int32      size of the base image
    view_offsets   list<int32>  per view: crop start in pixels along the long side (the short
                              side equals the crop size, so the other offset is 0)
    view_flips     list<bool>   per view: mirrored left-right after cropping
    proxy_codes    list<fixed_size_list<uint16>[g*g]>  per view: the teacher's codes, row-major grid

Token dataset (jobs/tokenize_dataset.py): the same minus the image columns, with
    tokens         list<fixed_size_list<uint16>[N]>  per view: the tokenizer's tokens

Quarantine table (`_errors/<shard>.parquet`): key, shard, member, reason, detail (strings).
File-level metadata (`titok.*` keys) records the view set, crop size, model identity and format.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

KEY = "key"
LABEL = "label"
SOURCE_SHARD = "source_shard"
SOURCE_MEMBER = "source_member"
IMAGE = "image"
IMAGE_FORMAT = "image_format"
HEIGHT = "height"
WIDTH = "width"
VIEW_OFFSETS = "view_offsets"
VIEW_FLIPS = "view_flips"
PROXY_CODES = "proxy_codes"
TOKENS = "tokens"

FORMAT_VERSION = 1
METADATA_KEY = b"titok"


def codes_type(codes_per_view: int) -> pa.DataType:
    # uint16 holds any codebook up to 65536 entries; a fixed inner size keeps readers' shapes exact.
    return pa.list_(pa.list_(pa.uint16(), codes_per_view))


def _common() -> list[pa.Field]:
    return [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(LABEL, pa.int32(), nullable=False),
        pa.field(SOURCE_SHARD, pa.string(), nullable=False),
        pa.field(SOURCE_MEMBER, pa.string(), nullable=False),
    ]


def _views() -> list[pa.Field]:
    return [
        pa.field(VIEW_OFFSETS, pa.list_(pa.int32()), nullable=False),
        pa.field(VIEW_FLIPS, pa.list_(pa.bool_()), nullable=False),
    ]


def proxy_schema(codes_per_view: int, metadata: dict[str, Any] | None = None) -> pa.Schema:
    fields = _common() + [
        pa.field(IMAGE, pa.binary(), nullable=False),
        pa.field(IMAGE_FORMAT, pa.string(), nullable=False),
        pa.field(HEIGHT, pa.int32(), nullable=False),
        pa.field(WIDTH, pa.int32(), nullable=False),
    ] + _views() + [pa.field(PROXY_CODES, codes_type(codes_per_view), nullable=False)]
    return _with_meta(pa.schema(fields), metadata)


def token_schema(tokens_per_view: int, metadata: dict[str, Any] | None = None) -> pa.Schema:
    fields = _common() + _views() + [pa.field(TOKENS, codes_type(tokens_per_view), nullable=False)]
    return _with_meta(pa.schema(fields), metadata)


ERRORS_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("member", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
])


def _with_meta(schema: pa.Schema, metadata: dict[str, Any] | None) -> pa.Schema:
    if not metadata:
        return schema
    return schema.with_metadata({METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **metadata}).encode()})


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The `titok` metadata a job stored in a file's schema ({} if none)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
