"""Per-shard commits: the output layout and the success records that make reruns exactly-once.

    <output>/<name>.parquet            rows of input shard <name> (deterministic name)
    <output>/_errors/<name>.parquet    its quarantined samples
    <output>/_<kind>/<name>.<ext>      side files a job adds per shard (evaluation: `_stats/`, `_grids/`)
    <output>/_success/<name>.json      its success record, written last: the commit
    <output>/_summary.json             the last run's job summary

Each file is written atomically (temp + rename, or one completed upload). A shard counts as done
only once its success record exists; a rerun redoes every other shard and overwrites its files
with the same names, so a kill at any moment loses nothing and duplicates nothing. Readers that
open the directory (pyarrow, pandas, DuckDB `*.parquet`, HF datasets) skip `_`-prefixed paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import posixpath
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .quarantine import SampleErrorRecord
from .schema import CODES_COLUMNS, ERRORS_SCHEMA
from .storage import atomic_write_bytes, exists, is_local, join_url, list_dir, read_json, write_json_atomic

SUCCESS_DIR = "_success"
ERRORS_DIR = "_errors"
SUMMARY = "_summary.json"


def shard_name(url: str) -> str:
    """Output name of an input shard: its file name without extension (`train-000001`)."""
    base = posixpath.basename(url.rstrip("/"))
    return base[: -len(".tar")] if base.endswith(".tar") else base.rsplit(".", 1)[0] or base


def unique_names(urls: list[str]) -> list[str]:
    names = [shard_name(u) for u in urls]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise ValueError(f"input shards share the output name(s) {dupes[:3]}: give shards unique file names")
    return names


def data_url(output: str, name: str) -> str:
    return join_url(output, f"{name}.parquet")


def success_url(output: str, name: str) -> str:
    return join_url(output, SUCCESS_DIR, f"{name}.json")


def committed(output: str, storage_options: dict | None = None) -> dict[str, dict[str, Any]]:
    """name -> success record, for every committed shard under `output`."""
    root = join_url(output, SUCCESS_DIR)
    if not exists(root, storage_options):
        return {}
    records = {}
    for url in list_dir(root, storage_options):
        if url.endswith(".json"):
            records[posixpath.basename(url)[: -len(".json")]] = read_json(url, storage_options)
    return records


def remove_stale_temporaries(output: str) -> int:
    """Delete temporary files a killed run left in a local output (dot-files readers skip anyway)."""
    if not is_local(output):
        return 0  # object stores: an unfinished upload never becomes visible
    root = Path(output.removeprefix("file://"))
    dirs = [root, *(d for d in root.glob("_*") if d.is_dir())] if root.is_dir() else []  # _errors, _success, side files
    stale = [p for d in dirs for p in d.glob(".*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    # zstd; byte-stream-split lets zstd see the (mostly zero) high bytes of uint16 codes together.
    pq.write_table(table, buf, compression="zstd", compression_level=6,
                   use_byte_stream_split=[c for c in table.column_names if c in CODES_COLUMNS] or False,
                   row_group_size=1024)
    return buf.getvalue()


def commit_shard(output: str, name: str, shard: str, table: pa.Table, errors: list[SampleErrorRecord],
                 extra: dict[str, Any], storage_options: dict | None = None,
                 side_files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Write data, errors, any side files, then the success record. Returns the record.

    Args:
        side_files: more per-shard files, by path relative to `output` (e.g. `_stats/<name>.npz`);
            written before the success record, so they are committed with the shard. The record
            lists them with their SHA-256.
    """
    data = parquet_bytes(table)
    atomic_write_bytes(data_url(output, name), data, storage_options)
    err_table = pa.Table.from_pylist([dataclasses.asdict(e) for e in errors], schema=ERRORS_SCHEMA)
    atomic_write_bytes(join_url(output, ERRORS_DIR, f"{name}.parquet"), parquet_bytes(err_table), storage_options)
    for rel, content in (side_files or {}).items():
        atomic_write_bytes(join_url(output, *rel.split("/")), content, storage_options)
    record = {
        "shard": shard,
        "name": name,
        "file": f"{name}.parquet",
        "rows": table.num_rows,
        "errors": len(errors),
        "errors_by_reason": dict(Counter(e.reason for e in errors)),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"side_files": {rel: hashlib.sha256(c).hexdigest() for rel, c in side_files.items()}} if side_files else {}),
        **extra,
    }
    write_json_atomic(success_url(output, name), record, storage_options)
    return record


def write_summary(output: str, summary: dict[str, Any], storage_options: dict | None = None) -> None:
    write_json_atomic(join_url(output, SUMMARY), summary, storage_options)

