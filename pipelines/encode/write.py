"""CPU stage: an `EncodedShard` -> its committed Parquet file; returns a `ShardResult`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .. import schema as S
from ..commit import commit_shard


def shard_table(shard: S.EncodedShard, metadata: S.DatasetMetadata) -> pa.Table:
    """The shard's rows in the dataset schema (pipelines.schema): proxy rows keep the base image."""
    n, nv, length = shard.codes.shape
    inner = pa.FixedSizeListArray.from_arrays(pa.array(shard.codes.reshape(-1), pa.uint16()), length)
    codes = pa.ListArray.from_arrays(pa.array(np.arange(0, n * nv + 1, nv, dtype=np.int32)), inner)
    columns: dict[str, Any] = {
        S.KEY: pa.array(shard.keys, pa.string()),
        S.LABEL: pa.array(shard.labels, pa.int32()),
        S.SOURCE_SHARD: pa.array(shard.sources, pa.string()),
        S.SOURCE_MEMBER: pa.array(shard.members, pa.string()),
    }
    keep_image = metadata.image_format is not None
    if keep_image:
        columns.update({
            S.IMAGE: S.binary_array(shard.images, pa.binary()),
            S.IMAGE_FORMAT: pa.array([metadata.image_format] * n, pa.string()),
            S.HEIGHT: pa.array(shard.heights, pa.int32()),
            S.WIDTH: pa.array(shard.widths, pa.int32()),
        })
    columns[S.VIEW_OFFSETS] = pa.array(list(shard.view_offsets.reshape(n, nv)), pa.list_(pa.int32()))
    columns[S.VIEW_FLIPS] = pa.array([shard.view_flips] * n, pa.list_(pa.bool_()))
    columns[metadata.codes_column] = codes
    target = (S.proxy_schema if keep_image else S.token_schema)(length, metadata)
    return pa.Table.from_pydict(columns).cast(target)


def write_encoded_shards(batch: pa.Table, output: str, metadata: S.DatasetMetadata,
                         storage_options: dict | None = None) -> pa.Table:
    """Ray Data stage: `EncodedShard` rows -> `ShardResult` rows, each shard committed."""
    return S.ShardResult.to_table([write_shard(shard, output, metadata, storage_options)
                                   for shard in S.EncodedShard.from_table(batch)])


def write_shard(shard: S.EncodedShard, output: str, metadata: S.DatasetMetadata,
                storage_options: dict | None = None) -> S.ShardResult:
    """Commit one shard unless it could not be read at all (then it is reported as failed)."""
    result = S.ShardResult(shard.shard, shard.name, len(shard.keys), shard.errors, shard.failed, stats=shard.stats)
    if not shard.failed:
        record = commit_shard(output, shard.name, shard.shard, shard_table(shard, metadata), shard.errors,
                              {"codes_column": metadata.codes_column}, storage_options)
        result.bytes = record["bytes"]
    return result
