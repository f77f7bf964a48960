"""Per-shard commits: the output layout and the success records that make reruns exactly-once.

    <output>/<name>.parquet            rows of input shard <name> (deterministic name)
    <output>/_errors/<name>.parquet    its quarantined samples
    <output>/_<kind>/<name>.<ext>      side files a job adds per shard (evaluation: `_stats/`, `_grids/`)
    <output>/_success/<name>.json      its success record, written last: the commit
    <output>/_summary.json             the last run's job summary
    <output>/_lease.json               while a run writes: which run, renewed every ttl / 3 seconds

One run at a time writes an output (`OutputLease`): a second run started on it stops with one
line while the first one's lease is fresh; a killed run's lease expires `ttl` seconds after its
last renewal, so it never blocks a rerun for longer than that.

Each file is written atomically (temp + rename, or one completed upload). A shard counts as done
only once its success record exists; a rerun redoes every other shard and overwrites its files
with the same names, so a kill at any moment loses nothing and duplicates nothing. Readers that
open the directory (pyarrow, pandas, DuckDB `*.parquet`, HF datasets) skip `_`-prefixed paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .quarantine import SampleErrorRecord
from .schema import CODES_COLUMNS, ERRORS_SCHEMA, IMAGE
from .storage import (
    atomic_write_bytes,
    exists,
    get_fs,
    is_local,
    join_url,
    list_dir,
    read_json,
    write_json_atomic,
)

SUCCESS_DIR = "_success"
ERRORS_DIR = "_errors"
SUMMARY = "_summary.json"
LEASE = "_lease.json"
LEASE_TTL_ENV = "TITOK_LEASE_TTL_S"  # seconds; tests shorten it
DEFAULT_LEASE_TTL_S = 120.0

log = logging.getLogger("titok.commit")


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
    # zstd; byte-stream-split lets zstd see the (mostly zero) high bytes of uint16 codes together. The
    # stored images are compressed already: zstd over them costs CPU and saves nothing.
    compression = {c: "none" if c == IMAGE else "zstd" for c in table.column_names}
    levels = {c: 6 for c, codec in compression.items() if codec == "zstd"}
    pq.write_table(table, buf, compression=compression, compression_level=levels,
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



class OutputBusyError(RuntimeError):
    """Another run holds the output's lease: one line saying which, and when it expires."""


class OutputLease:
    """A context manager that holds `<output>/_lease.json` while a run writes the output.

    Entering fails with `OutputBusyError` when another run renewed its lease less than its `ttl_s`
    ago; a lease older than that (its holder was killed) is taken over. A thread renews the lease
    every ttl / 3 seconds; leaving removes it. Two runs that start within the same instant can both
    enter (object stores have no atomic create here); that costs duplicate work, never data: every
    shard is still committed exactly once.
    """

    def __init__(self, output: str, job: str, storage_options: dict | None = None, ttl_s: float | None = None):
        self.url = join_url(output, LEASE)
        self.output, self.job, self.storage_options = output, job, storage_options
        self.ttl_s = float(ttl_s or os.environ.get(LEASE_TTL_ENV) or DEFAULT_LEASE_TTL_S)
        self.record = {"run_id": uuid.uuid4().hex, "job": job, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_started": _process_start(os.getpid()), "started_at": time.time(), "ttl_s": self.ttl_s}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _current(self) -> dict[str, Any] | None:
        fs, path = get_fs(self.url, storage_options=self.storage_options)
        fs.invalidate_cache(path)
        try:
            return read_json(self.url, self.storage_options)
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as expired
            return None

    def _write(self) -> None:
        write_json_atomic(self.url, {**self.record, "renewed_at": time.time()}, self.storage_options)

    def __enter__(self) -> OutputLease:
        held = self._current()
        if held is not None and held.get("run_id") != self.record["run_id"]:
            age = time.time() - float(held.get("renewed_at", 0))
            ttl = float(held.get("ttl_s", self.ttl_s))
            if age < ttl and not self._holder_died(held):
                started = time.strftime("%H:%M:%S", time.localtime(float(held.get("started_at", 0))))
                raise OutputBusyError(
                    f"{self.output} is being written by another run ({held.get('job')} on {held.get('host')}, pid "
                    f"{held.get('pid')}, started {started}); wait for it to finish, or, if it was killed, rerun once "
                    f"its lease expires (within {ttl - age:.0f} s)")
            log.info("taking over the lease of %s: its run is gone (last renewed %.0f s ago)", self.output, age)
        self._write()
        self._thread = threading.Thread(target=self._renew, name="output-lease", daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _holder_died(held: dict[str, Any]) -> bool:
        """True when the holder ran on this machine and its process is gone (killed): no need to wait
        for its lease to expire. Holders on other machines are only ever timed out."""
        if held.get("host") != socket.gethostname() or held.get("pid_started") is None:  # elsewhere, or no /proc
            return False
        started = _process_start(int(held.get("pid", -1)))
        return started is None or started != held.get("pid_started")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except Exception as e:  # the store is down: the run notices on its own writes
                log.warning("could not renew the lease on %s: %s", self.output, e)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._current()
            if held is not None and held.get("run_id") == self.record["run_id"]:
                fs, path = get_fs(self.url, storage_options=self.storage_options)
                fs.rm_file(path)
        except Exception as e:  # unreachable store: the lease simply expires
            log.warning("could not release the lease on %s: %s", self.output, e)


def _process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), None if there is no such
    process: with the pid it tells a live process from a dead one whose pid was reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
