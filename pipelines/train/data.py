"""Training input: the proxy-code Parquet dataset -> per-worker batches of (view crop, its codes).

Driver side (before any worker starts):
    inspect_dataset     list the files, read their footers: rows, the `titok` metadata (teacher,
                        codebook, crop size, views); raises one-line `DatasetError`s
    build_dataset       Ray Data: one read task per file (only the needed columns) -> shuffled block
                        order; Ray Train splits it across the workers (`get_dataset_shard`)

Worker side:
    iterate_batches     epochs of raw batches from the worker's shard (small datasets: read once,
                        shuffled in memory per epoch); skips what a checkpoint says was already
                        consumed; decodes ahead in a thread pool
    ViewSampler         per sample and epoch, one stored view chosen by (seed, epoch, key): decode
                        the base image, crop / flip it to that view; the targets are that view's codes

The view choice depends only on (seed, epoch, key), and with `preserve_order` the split and the
order within an epoch are deterministic, so a resumed run sees the batches the lost one would have.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema
from ..preprocess import decode_stored_crop
from ..schema import DatasetMetadata
from ..storage import S3_PROTOCOLS, expand_inputs, get_fs, is_local, protocol_of


class DatasetError(ValueError):
    """The dataset given to training is missing, empty, or does not fit the model: one line with the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """What training needs to know about a proxy-code dataset.

    Args:
        files: Parquet file URLs, in order.
        rows: total rows (images).
        bytes: total size of the files.
        metadata: the dataset metadata the precompute job wrote (same in every file).
        code_range: (smallest, largest proxy code, a file holding one of them) by the files' Parquet
            statistics; None when the files carry none.
    """

    files: tuple[str, ...]
    rows: int
    bytes: int
    metadata: DatasetMetadata
    code_range: tuple[int, int, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"files": list(self.files), "rows": self.rows, "bytes": self.bytes, "metadata": self.metadata.to_dict(),
                "code_range": list(self.code_range) if self.code_range else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        return cls(tuple(d["files"]), int(d["rows"]), int(d["bytes"]), DatasetMetadata.from_dict(d["metadata"]),
                   tuple(d["code_range"]) if d.get("code_range") else None)


@dataclass(frozen=True)
class DatasetFile:
    """One Parquet file of a dataset, as its footer describes it (no data read)."""

    url: str
    size: int
    footer: pq.FileMetaData
    metadata: DatasetMetadata


def scan_dataset(data: str, storage_options: dict | None, *, maker: str,
                 kind_error: Callable[[pa.Schema, DatasetMetadata | None], str | None],
                 layout: Callable[[DatasetMetadata], tuple], layout_names: str) -> list[DatasetFile]:
    """The files of the dataset at `data` (directory, glob, list, URL) with their footers and metadata,
    checked to be readable, of the wanted kind and from one run.

    Args:
        maker: the job that makes this kind of dataset (named in the fixes).
        kind_error: a file's schema and metadata -> what the file is when it is not of the wanted kind, else None.
        layout / layout_names: what must be equal in every file of one run, and how to name it.

    Raises:
        DatasetError: nothing there, a file unreadable / of another kind / of another run, or no rows.
    """
    if not any(c in data for c in "*?[{") and not data.endswith(".txt"):
        fs, path = get_fs(data, storage_options=storage_options)
        if not fs.exists(path):
            raise DatasetError(f"--data {data} does not exist; make the dataset with {maker}")
    try:
        urls = expand_inputs(data, storage_options, suffix=".parquet")
    except ValueError as e:
        raise DatasetError(f"--data {data}: {e}; run {maker} to make one") from None
    files: list[DatasetFile] = []
    for url in urls:
        fs, path = get_fs(url, storage_options=storage_options)
        try:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                arrow_schema, footer = pf.schema_arrow, pf.metadata
        except Exception as e:  # not Parquet, cut short ...
            raise DatasetError(f"--data {data}: {url} is not a readable Parquet file ({type(e).__name__}: "
                               f"{(str(e).splitlines() or [''])[0][:150]})") from None
        try:
            meta = DatasetMetadata.from_schema(arrow_schema)
        except (ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"--data {data}: {url} has damaged titok metadata ({e})") from None
        kind = kind_error(arrow_schema, meta)
        if kind is not None or meta is None:
            raise DatasetError(f"--data {data}: {url} is {kind}; point --data at the output of {maker}")
        if files and layout(meta) != layout(files[0].metadata):
            raise DatasetError(f"--data {data}: {url} was written with a different {layout_names} than "
                               f"{files[0].url}; one dataset must come from one run of {maker}")
        files.append(DatasetFile(url, fs.size(path), footer, meta))
    if sum(f.footer.num_rows for f in files) == 0:
        raise DatasetError(f"--data {data}: the dataset has no rows ({len(files)} empty file(s))")
    return files


def widen_range(current: tuple[int, int, str] | None, low: int | None, high: int | None,
                url: str) -> tuple[int, int, str] | None:
    """(smallest, largest, a file holding one of them) so far, widened by one file's (low, high)."""
    if low is None:
        return current
    if current is None:
        return (int(low), int(high), url)
    if low < current[0] or high > current[1]:
        return (min(int(low), current[0]), max(int(high), current[1]), url)
    return current


def inspect_dataset(data: str, storage_options: dict | None = None) -> DatasetInfo:
    """Files, row count and metadata of the proxy dataset at `data` (directory, glob, list, URL).

    Raises:
        DatasetError: nothing there, no rows, files written by different runs, or not a proxy dataset.
    """
    def kind_error(arrow_schema: pa.Schema, meta: DatasetMetadata | None) -> str | None:
        if meta is not None and meta.teacher is not None and schema.PROXY_CODES in arrow_schema.names:
            return None
        return "a token dataset file" if meta is not None and meta.tokenizer is not None else \
            "not a proxy-code file (no proxy_codes column or titok metadata)"

    files = scan_dataset(data, storage_options, maker="jobs/precompute_proxy.py", kind_error=kind_error,
                         layout=_layout, layout_names="teacher / views / crop size")
    codes = None
    for f in files:
        codes = widen_range(codes, *code_range(f.footer), f.url)
    return DatasetInfo(tuple(f.url for f in files), sum(f.footer.num_rows for f in files),
                       sum(f.size for f in files), files[0].metadata, codes)


def code_range(footer: pq.FileMetaData, column_name: str = schema.PROXY_CODES) -> tuple[int | None, int | None]:
    """(smallest, largest) proxy code (or value of another integer column, e.g. tokens or labels) of a
    file by the min / max statistics of its footer (no data read); (None, None) for a file written
    without statistics (then `ViewSampler` checks batch by batch)."""
    low = high = None
    for g in range(footer.num_row_groups):
        group = footer.row_group(g)
        for j in range(group.num_columns):
            column = group.column(j)
            if column.path_in_schema.split(".")[0] != column_name:
                continue
            stats = column.statistics
            if stats is None or not stats.has_min_max:
                return None, None
            low = stats.min if low is None else min(low, stats.min)
            high = stats.max if high is None else max(high, stats.max)
    return low, high


def _layout(meta: DatasetMetadata) -> tuple:
    return meta.views, meta.crop_size, meta.codes_per_view, meta.proxy_codebook_size, meta.model.weights_sha256


def check_layout(info: DatasetInfo, *, image_size: int, grid: int, proxy_codebook_size: int,
                 teacher_config: dict[str, Any]) -> None:
    """The dataset's codes and crops must be what the model predicts and sees.

    Raises:
        DatasetError: naming the mismatching value on both sides.
    """
    m = info.metadata
    checks = [
        ("crop size", m.crop_size, image_size, "the model's image_size"),
        ("codes per view", m.codes_per_view, grid * grid, f"the model's {grid}x{grid} proxy grid"),
        ("proxy codebook size", m.proxy_codebook_size, proxy_codebook_size, "the model's proxy head"),
    ]
    for what, got, want, whose in checks:
        if got != want:
            raise DatasetError(f"--data: the dataset's {what} is {got} but {whose} needs {want}; precompute the "
                               "dataset with the matching teacher / --resolution, or pick the matching --preset")
    if info.code_range is not None:
        low, high, url = info.code_range
        if not 0 <= low <= high < proxy_codebook_size:
            raise DatasetError(f"--data: {url} holds proxy codes {low}..{high}, outside the teacher's codebook "
                               f"[0, {proxy_codebook_size}); the file is damaged or was not written by this teacher: "
                               "delete it and its _success record, and rerun jobs/precompute_proxy.py")
    teacher = m.model.config
    if teacher != teacher_config:
        diff = sorted(k for k in set(teacher) | set(teacher_config) if teacher.get(k) != teacher_config.get(k))
        raise DatasetError(f"--data: the dataset's teacher differs from the preset's pixel VQGAN in {diff}; "
                           "the proxy codes must come from the MaskGIT-VQGAN the model decodes with")


def pyarrow_filesystem(url: str, storage_options: dict | None = None):
    """(pyarrow filesystem or None, path) for Ray Train's checkpoint storage; None for local paths.

    Ray Train uses it in its controller and workers, processes of a cluster that may have been
    started without the driver's storage environment. Static S3 keys from the driver's environment
    are therefore written into the filesystem object; other credentials (instance roles, profiles)
    are left to each node's own AWS chain, since pinned temporary credentials would expire.
    """
    if is_local(url):
        return None, url
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    options = dict(storage_options or {})
    if protocol_of(url) in S3_PROTOCOLS and os.environ.get("AWS_ACCESS_KEY_ID"):
        options.setdefault("key", os.environ["AWS_ACCESS_KEY_ID"])
        options.setdefault("secret", os.environ.get("AWS_SECRET_ACCESS_KEY"))
        if os.environ.get("AWS_SESSION_TOKEN"):
            options.setdefault("token", os.environ["AWS_SESSION_TOKEN"])
    fs, path = get_fs(url, storage_options=options)
    return PyFileSystem(FSSpecHandler(fs)), path


# Below this size the dataset is read once into the object store: every epoch of a small dataset
# would otherwise pay Ray Data's read start-up again (about 0.9 s vs 0.16 s per epoch, 2 cores).
MATERIALIZE_BELOW_BYTES = 256 * 2**20
# Rows per block a read task emits (~40 MB of PNG base images at 256 px).
ROWS_PER_BLOCK = 256


def read_files(batch: dict[str, np.ndarray], columns: list[str], storage_options: dict | None = None,
               rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[pa.Table]:
    """Ray Data read stage: Parquet file URLs -> tables of `columns`, `rows_per_block` rows at a time."""
    for url in batch["file"]:
        fs, path = get_fs(str(url), storage_options=storage_options)
        with fs.open(path, "rb") as f:
            for record_batch in pq.ParquetFile(f).iter_batches(batch_size=rows_per_block, columns=columns):
                table = pa.Table.from_batches([record_batch])
                # which file each row came from, for error messages (a few KB beside ~40 MB of images)
                yield table.append_column(schema.SOURCE_FILE, pa.array([str(url)] * table.num_rows, pa.string()))


def build_dataset(info: DatasetInfo, seed: int, with_codes: bool, storage_options: dict | None = None,
                  env: dict[str, str] | None = None):
    """The Ray Dataset the trainer splits across workers: only the columns training reads.

    The read is our own task per file (not `read_parquet`): its runtime env carries `env` (storage
    credentials, endpoint), also on a cluster started without them, and file order is kept.
    """
    import ray
    ray.data.DataContext.get_current().enable_progress_bars = False  # the trainer logs its own progress
    columns = [schema.KEY, schema.IMAGE, schema.HEIGHT, schema.WIDTH, schema.VIEW_OFFSETS, schema.VIEW_FLIPS]
    if with_codes:
        columns.append(schema.PROXY_CODES)
    remote_args = {"runtime_env": {"env_vars": env}} if env else {}
    ds = ray.data.from_items([{"file": u} for u in info.files], override_num_blocks=len(info.files))
    ds = ds.map_batches(read_files, batch_size=1, fn_kwargs={"columns": columns, "storage_options": storage_options},
                        **remote_args)
    if info.bytes < MATERIALIZE_BELOW_BYTES:
        ds = ds.materialize()
    # A shuffled block order (the same every epoch for a seed) plus each worker's local shuffle
    # buffer: the order changes every epoch without a global shuffle of image bytes.
    return ds.randomize_block_order(seed=seed)


# ------------------------------------------------------------------------------------------------
# Worker side


def choose_view(seed: int, epoch: int, key: str, num_views: int) -> int:
    """The stored view a sample uses in an epoch: uniform, fixed by (seed, epoch, key)."""
    return int(np.random.default_rng([seed, epoch, zlib.crc32(key.encode())]).integers(num_views))


@dataclass(frozen=True)
class ViewSampler:
    """Raw dataset batch -> {"images": (B, crop, crop, 3) uint8, "codes": (B, g*g) int64, "views": (B,)}.

    Args:
        seed: recipe seed (view choice).
        crop: crop size (= the dataset's crop_size).
        with_codes: also return the chosen views' proxy codes (stage 1).
        codebook_size: codes must lie in [0, codebook_size) (checked per batch; None: not checked).
    """

    seed: int
    crop: int
    with_codes: bool = True
    codebook_size: int | None = None

    def view_crop(self, batch: dict[str, np.ndarray], i: int, view: int) -> np.ndarray:
        """Row i's stored view `view`, cropped from its stored base image: (crop, crop, 3) uint8."""
        try:
            return decode_stored_crop(batch[schema.IMAGE][i], int(batch[schema.VIEW_OFFSETS][i][view]),
                                      bool(batch[schema.VIEW_FLIPS][i][view]), self.crop)
        except ValueError as e:  # a row whose offsets do not fit its image
            raise ValueError(f"sample {batch[schema.KEY][i]} ({batch[schema.HEIGHT][i]}x{batch[schema.WIDTH][i]}): "
                             f"{e}") from None

    def __call__(self, batch: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        n = len(batch[schema.KEY])
        images = np.empty((n, self.crop, self.crop, 3), np.uint8)
        views = np.empty(n, np.int64)
        codes = []
        for i in range(n):
            v = choose_view(self.seed, epoch, str(batch[schema.KEY][i]), len(batch[schema.VIEW_OFFSETS][i]))
            images[i] = self.view_crop(batch, i, v)
            views[i] = v
            if self.with_codes:
                codes.append(np.asarray(batch[schema.PROXY_CODES][i][v], dtype=np.int64))
        out = {"images": images, "views": views, "keys": np.asarray(batch[schema.KEY], dtype=object)}
        if self.with_codes:
            out["codes"] = np.stack(codes)
            if self.codebook_size is not None and (out["codes"].min() < 0 or out["codes"].max() >= self.codebook_size):
                i = int(np.flatnonzero((out["codes"] < 0).any(1) | (out["codes"] >= self.codebook_size).any(1))[0])
                source = batch[schema.SOURCE_FILE][i] if schema.SOURCE_FILE in batch else "the dataset"
                raise DatasetError(f"--data: {source}, sample {batch[schema.KEY][i]}: proxy code "
                                   f"{int(out['codes'][i].max())} is outside the teacher's codebook "
                                   f"[0, {self.codebook_size}); the file is damaged or not from this teacher")
        return out


def iterate_batches(shard, sampler: ViewSampler, *, micro_batch: int, start_epoch: int, start_batch: int,
                    shuffle_seed: int, shuffle_buffer: int, cache: bool = False, decode_threads: int = 2,
                    prefetch: int | None = None) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(epoch, batch index in the epoch, decoded batch) from `(start_epoch, start_batch)` on, forever.

    Batches before `start_batch` of the first epoch are read but not decoded (resume). Every
    worker gets the same number of full batches per epoch (equal split, drop_last), so DDP steps
    stay in lockstep.

    Args:
        shard: this worker's `ray.train.get_dataset_shard(...)`.
        cache: keep this worker's rows (image bytes) in memory after one pass and shuffle them
            locally each epoch: for small (materialized) datasets, where Ray Data's per-epoch split
            start-up (~0.15 s) would cost more than the epoch itself.
        shuffle_seed: seeds the per-epoch shuffles (include the worker rank for cached shards).
        decode_threads: threads decoding stored images (the loop gives one per CPU of the worker).
        prefetch: decoded batches kept ahead of the training step (default decode_threads + 1).

    Raises:
        RuntimeError: an epoch has no full batch (dataset smaller than the global micro-batch).
    """
    # Each thread decodes whole micro-batches (stored-image decoding releases the GIL), so as many
    # batches are in flight as there are threads, plus one ready for the training step.
    prefetch = decode_threads + 1 if prefetch is None else prefetch
    pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
    rows = _read_all(shard) if cache else None
    epoch, skip = start_epoch, start_batch
    try:
        while True:
            pending: deque = deque()
            n = 0
            for raw in _epoch_batches(shard, rows, micro_batch, epoch, shuffle_seed, shuffle_buffer):
                if n >= skip:
                    pending.append((n, pool.submit(sampler, raw, epoch)))
                    if len(pending) > prefetch:
                        i, fut = pending.popleft()
                        yield epoch, i, fut.result()
                n += 1
            while pending:
                i, fut = pending.popleft()
                yield epoch, i, fut.result()
            if n == 0:
                raise RuntimeError(f"epoch {epoch} gave this worker no full batch of {micro_batch} rows: "
                                   "the dataset is too small for the batch size and worker count")
            epoch, skip = epoch + 1, 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _read_all(shard) -> dict[str, np.ndarray]:
    """One pass over a shard, as columns (the split is deterministic, so it is every epoch's content)."""
    parts = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _epoch_batches(shard, rows: dict[str, np.ndarray] | None, micro_batch: int, epoch: int, seed: int,
                   shuffle_buffer: int) -> Iterator[dict[str, np.ndarray]]:
    if rows is not None:
        n = len(next(iter(rows.values()))) if rows else 0
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, n - micro_batch + 1, micro_batch):
            idx = order[start:start + micro_batch]
            yield {k: v[idx] for k, v in rows.items()}
        return
    yield from shard.iter_batches(
        batch_size=micro_batch, batch_format="numpy", drop_last=True, prefetch_batches=2,
        local_shuffle_buffer_size=max(shuffle_buffer, micro_batch) if shuffle_buffer else None,
        local_shuffle_seed=(seed * 1_000_003 + epoch) % 2**31 if shuffle_buffer else None)
