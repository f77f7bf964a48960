"""CPU stage: an encoded shard row -> its committed Parquet file; returns a small summary row."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from . import schema as S
from .commit import commit_shard


def shard_table(row: dict[str, Any], codes_column: str, keep_image: bool, image_format: str,
                metadata: dict[str, Any]) -> pa.Table:
    """The shard's rows in the dataset schema (pipelines.schema)."""
    n, nv, length = row["codes_shape"]
    codes = np.frombuffer(row["codes"], dtype=np.uint16).reshape(n, nv, length)
    flips = [bool(f) for f in row["view_flips"]]
    inner = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), pa.uint16()), length)
    codes_arr = pa.ListArray.from_arrays(pa.array(np.arange(0, n * nv + 1, nv, dtype=np.int32)), inner)
    columns: dict[str, Any] = {
        S.KEY: pa.array(row["keys"], pa.string()),
        S.LABEL: pa.array(row["labels"], pa.int32()),
        S.SOURCE_SHARD: pa.array(row["sources"], pa.string()),
        S.SOURCE_MEMBER: pa.array(row["members"], pa.string()),
    }
    if keep_image:
        columns.update({
            S.IMAGE: pa.array(row["images"], pa.binary()),
            S.IMAGE_FORMAT: pa.array([image_format] * n, pa.string()),
            S.HEIGHT: pa.array(row["heights"], pa.int32()),
            S.WIDTH: pa.array(row["widths"], pa.int32()),
        })
    columns[S.VIEW_OFFSETS] = pa.array(json.loads(row["view_offsets"]), pa.list_(pa.int32()))
    columns[S.VIEW_FLIPS] = pa.array([flips] * n, pa.list_(pa.bool_()))
    columns[codes_column] = codes_arr
    target = (S.proxy_schema if keep_image else S.token_schema)(length, metadata)
    return pa.Table.from_pydict(columns).cast(target)


def write_shard(row: dict[str, Any], output: str, codes_column: str, keep_image: bool, image_format: str,
                metadata: dict[str, Any], storage_options: dict | None = None) -> dict[str, Any]:
    """Commit one shard unless it could not be read at all (then it is reported as failed)."""
    errors = [json.loads(e) for e in row["errors"]]
    result = {"shard": row["shard"], "name": row["name"], "rows": len(row["keys"]), "errors": json.dumps(errors),
              "failed": bool(row["failed"]), "bytes": 0, "stats": row.get("stats") or "{}"}
    if row["failed"]:
        return result
    t0 = time.perf_counter()
    table = shard_table(row, codes_column, keep_image, image_format, metadata)
    record = commit_shard(output, row["name"], row["shard"], table, errors,
                          {"codes_column": codes_column}, storage_options)
    result["bytes"] = record["bytes"]
    result["write_s"] = time.perf_counter() - t0
    return result
