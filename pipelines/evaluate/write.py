"""CPU stage: an `EvaluatedShard` -> its committed per-image Parquet file and side files; returns a
`ShardResult` (the shard jobs' commit protocol, `pipelines.commit`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .. import schema as S
from ..commit import commit_shard


def shard_table(shard: S.EvaluatedShard, tokens_per_image: int) -> pa.Table:
    """The shard's per-image rows (`schema.evaluation_schema`); LPIPS is null when not measured."""
    n = len(shard.keys)
    tokens = shard.tokens.reshape(n, tokens_per_image)
    return pa.Table.from_pydict({
        S.KEY: pa.array(shard.keys, pa.string()),
        S.LABEL: pa.array(shard.labels, pa.int32()),
        S.SOURCE_SHARD: pa.array(shard.sources, pa.string()),
        S.SOURCE_MEMBER: pa.array(shard.members, pa.string()),
        S.TOKENS: pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1), pa.uint16()), tokens_per_image),
        S.PSNR: pa.array(shard.psnr, pa.float64()),
        S.SSIM: pa.array(shard.ssim, pa.float64()),
        S.LPIPS: pa.array(shard.lpips, pa.float64(), mask=np.isnan(shard.lpips)),
    }).cast(S.evaluation_schema(tokens_per_image))


def write_evaluated_shards(batch: pa.Table, output: str, tokens_per_image: int, fingerprint: dict[str, Any],
                           storage_options: dict | None = None) -> pa.Table:
    """Ray Data stage: `EvaluatedShard` rows -> `ShardResult` rows, each shard committed."""
    return S.ShardResult.to_table([write_evaluated_shard(shard, output, tokens_per_image, fingerprint, storage_options)
                                   for shard in S.EvaluatedShard.from_table(batch)])


def write_evaluated_shard(shard: S.EvaluatedShard, output: str, tokens_per_image: int, fingerprint: dict[str, Any],
                          storage_options: dict | None = None) -> S.ShardResult:
    """Commit one shard (data, errors, `_stats/`, `_grids/`, then the success record, which carries the
    run's `fingerprint`) unless it could not be read at all."""
    result = S.ShardResult(shard.shard, shard.name, len(shard.keys), shard.errors, shard.failed, stats=shard.stats)
    if not shard.failed:
        record = commit_shard(output, shard.name, shard.shard, shard_table(shard, tokens_per_image), shard.errors,
                              {"evaluation": fingerprint}, storage_options, side_files=shard.side_files)
        result.bytes = record["bytes"]
    return result
