"""CPU stage of the sampling job: a `SampledChunk` -> its PNGs and its committed chunk file;
returns a `ShardResult` (rows = images).

Order of writes (pipelines.commit): every PNG (atomically, under `<output>/images/`), then
`<output>/tokens/<chunk>.parquet`, its empty quarantine file and (with --reference-stats) its
statistics file `<output>/tokens/_stats/<chunk>.npz`, then the success record. A chunk
whose success record is missing is redone whole by a rerun, and its files are overwritten with the
same bytes (same seed, same names).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
from PIL import Image

from .. import schema as S
from ..commit import commit_shard
from ..storage import atomic_write_bytes, join_url
from .plan import image_file, image_key, stats_path

UPLOAD_THREADS = 8  # PNGs of a chunk written concurrently (object stores: one PUT each)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def chunk_table(chunk: S.SampledChunk) -> pa.Table:
    n, length = chunk.tokens.shape
    tokens = pa.FixedSizeListArray.from_arrays(pa.array(chunk.tokens.reshape(-1), pa.uint16()), length)
    return pa.Table.from_pydict({
        S.KEY: [image_key(c, i) for c, i in zip(chunk.labels, chunk.indices)],
        S.LABEL: pa.array(chunk.labels, pa.int32()),
        S.SAMPLE_INDEX: pa.array(chunk.indices, pa.int32()),
        S.FILE: [image_file(c, i) for c, i in zip(chunk.labels, chunk.indices)],
        S.TOKENS: tokens,
    }).cast(S.sample_schema(length))


def write_chunks(batch: pa.Table, output: str, table: str, seed: int, storage_options: dict | None = None) -> pa.Table:
    """Ray Data stage: `SampledChunk` rows -> `ShardResult` rows, each chunk written and committed."""
    return S.ShardResult.to_table([write_chunk(chunk, output, table, seed, storage_options)
                                   for chunk in S.SampledChunk.from_table(batch)])


def write_chunk(chunk: S.SampledChunk, output: str, table: str, seed: int,
                storage_options: dict | None = None) -> S.ShardResult:
    """Write a chunk's PNGs under `output`, then commit its rows under `table`."""

    def write(i: int) -> None:
        url = join_url(output, *image_file(chunk.labels[i], chunk.indices[i]).split("/"))
        atomic_write_bytes(url, png_bytes(chunk.images[i]), storage_options)

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(write, range(len(chunk.labels))))
    classes = sorted(set(chunk.labels), key=chunk.labels.index)
    side = {stats_path(chunk.name): chunk.stats_file} if chunk.stats_file else None
    record = commit_shard(table, chunk.name, f"classes {classes[0]}..{classes[-1]}", chunk_table(chunk), [],
                          {"classes": classes, "images": len(chunk.labels), "seed": seed}, storage_options,
                          side_files=side)
    return S.ShardResult(chunk.name, chunk.name, len(chunk.labels), [], False, record["bytes"], chunk.stats)
