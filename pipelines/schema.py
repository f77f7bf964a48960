"""Every name the datasets and the shard pipeline use, in one place.

Proxy-code dataset (jobs/precompute_proxy.py), one row per image, one file per input shard:
    key            string     WebDataset sample key
    label          int32      class index from the `.cls` member
    source_shard   string     URL of the input shard
    source_member  string     tar member the image came from
    image          binary     the preprocessed base image (shorter side = crop size): "zstd" (lossless,
                              the default), PNG or JPEG (pipelines.preprocess.decode_stored_image reads
                              all three); its *decoded* pixels are exactly what the teacher saw
    image_format   string     "zstd", "png" or "jpeg"
    height, width  int32      size of the base image
    view_offsets   list<int32>  per view: crop start in pixels along the long side (the short
                              side equals the crop size, so the other offset is 0)
    view_flips     list<bool>   per view: mirrored left-right after cropping
    proxy_codes    list<fixed_size_list<uint16>[g*g]>  per view: the teacher's codes, row-major grid

Token dataset (jobs/tokenize_dataset.py): the same minus the image columns, with
    tokens         list<fixed_size_list<uint16>[N]>  per view: the tokenizer's tokens

Evaluation table (jobs/evaluate_tokenizer.py), one row per image of the centre-crop protocol:
    key, label, source_shard, source_member   as above
    tokens         fixed_size_list<uint16>[N]   the tokenizer's tokens of the crop (the teacher: its codes)
    psnr, ssim     float64    of the uint8 reconstruction against the uint8 crop
    lpips          float64    LPIPS-VGG; null when the run measured no LPIPS (--no-lpips)

Quarantine table (`_errors/<shard>.parquet`): the fields of `quarantine.SampleErrorRecord`.

Sample table (jobs/sample_generator.py), one row per generated image, one file per chunk of classes:
    key            string     "<class>_<index>", e.g. "0207_0012"
    label          int32      the class it was generated for
    sample_index   int32      its index among the samples of its class
    file           string     its PNG, relative to the output directory
    tokens         fixed_size_list<uint16>[N]  the generated token ids (decode_tokens gives the image)

Dataset metadata: every data file's schema carries one JSON object under the `titok` key,
`DatasetMetadata` below: the view set, crop size, codes per view, the model that made the codes
(its identity) and the stored image format. Writers build it, readers (training, tokenizing a
proxy dataset, evaluation) parse it back with `DatasetMetadata.from_schema`.

Between the Ray stages of a shard job a whole shard travels as ONE row of an Arrow batch (so it is
never split and is the unit of commit): `DecodedShard` (decode -> model), `EncodedShard` (model ->
write) and `ShardResult` (write -> driver), each a `ShardRow` with `to_table` / `from_table` (its
images travel without copies); the evaluation job's model stage sends `EvaluatedShard` to its write
stage instead of `EncodedShard`. The sampling job sends a chunk of classes the same way:
`SampledChunk` (model -> write), then `ShardResult`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from .quarantine import SampleErrorRecord

# --------------------------------------------------------------------------------------------
# Dataset columns

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
CODES_COLUMNS = (PROXY_CODES, TOKENS)
# Added by readers, never stored: the file a row was read from (for error messages).
SOURCE_FILE = "_source_file"
PSNR = "psnr"
SSIM = "ssim"
LPIPS = "lpips"

FORMAT_VERSION = 1
METADATA_KEY = b"titok"

# The sample table's own columns (see the module docstring).
SAMPLE_INDEX = "sample_index"
FILE = "file"


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


def proxy_schema(codes_per_view: int, metadata: DatasetMetadata | None = None) -> pa.Schema:
    fields = _common() + [
        pa.field(IMAGE, pa.binary(), nullable=False),
        pa.field(IMAGE_FORMAT, pa.string(), nullable=False),
        pa.field(HEIGHT, pa.int32(), nullable=False),
        pa.field(WIDTH, pa.int32(), nullable=False),
    ] + _views() + [pa.field(PROXY_CODES, codes_type(codes_per_view), nullable=False)]
    return _with_meta(pa.schema(fields), metadata)


def token_schema(tokens_per_view: int, metadata: DatasetMetadata | None = None) -> pa.Schema:
    fields = _common() + _views() + [pa.field(TOKENS, codes_type(tokens_per_view), nullable=False)]
    return _with_meta(pa.schema(fields), metadata)


def evaluation_schema(tokens_per_image: int) -> pa.Schema:
    """Per-image rows of an evaluation (see the module docstring)."""
    fields = _common() + [
        pa.field(TOKENS, pa.list_(pa.uint16(), tokens_per_image), nullable=False),
        pa.field(PSNR, pa.float64(), nullable=False),
        pa.field(SSIM, pa.float64(), nullable=False),
        pa.field(LPIPS, pa.float64(), nullable=True),
    ]
    return pa.schema(fields)


def sample_schema(tokens_per_image: int) -> pa.Schema:
    """Rows of the sampling job's chunk files (see the module docstring)."""
    return pa.schema([
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(LABEL, pa.int32(), nullable=False),
        pa.field(SAMPLE_INDEX, pa.int32(), nullable=False),
        pa.field(FILE, pa.string(), nullable=False),
        pa.field(TOKENS, pa.list_(pa.uint16(), tokens_per_image), nullable=False),
    ])


# Every field of a quarantine record, as a string column (the record is the definition).
ERRORS_SCHEMA = pa.schema([pa.field(f.name, pa.string()) for f in dataclasses.fields(SampleErrorRecord)])


def _with_meta(schema: pa.Schema, metadata: DatasetMetadata | None) -> pa.Schema:
    if metadata is None:
        return schema
    return schema.with_metadata({METADATA_KEY: metadata.to_json().encode()})


# --------------------------------------------------------------------------------------------
# Dataset metadata


@dataclass(frozen=True)
class ModelIdentity:
    """The model that computed a dataset's codes.

    Args:
        kind: class name (MaskGITVQGAN, TiTok, TiTokReleased).
        config: its config (`model.config.to_dict()`).
        weights_sha256: hash over its state dict (names and bytes), independent of the file format.
        source: where it was loaded from.
    """

    kind: str
    config: dict[str, Any]
    weights_sha256: str
    source: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelIdentity:
        return cls(d["kind"], d["config"], d["weights_sha256"], d["source"])


@dataclass(frozen=True)
class DatasetMetadata:
    """What a proxy-code or token dataset says about itself (same in every file of one dataset).

    Args:
        views: view-set name (pipelines.preprocess.view_specs).
        view_specs: the views as (offset fraction, flip) pairs.
        crop_size: side of the crops the model saw (= short side of the stored base images).
        codes_per_view: codes per crop (teacher: grid * grid; tokenizer: its token count).
        image_format: how base images are stored ("zstd" / "png" / "jpeg"); None when not stored.
        teacher / proxy_codebook_size: proxy datasets: the MaskGIT-VQGAN and its codebook size.
        tokenizer / codebook_size: token datasets: the TiTok tokenizer and its codebook size.
        format_version: of this layout.
    """

    views: str
    view_specs: tuple[tuple[float, bool], ...]
    crop_size: int
    codes_per_view: int
    image_format: str | None = None
    teacher: ModelIdentity | None = None
    proxy_codebook_size: int | None = None
    tokenizer: ModelIdentity | None = None
    codebook_size: int | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "view_specs", tuple((float(o), bool(f)) for o, f in self.view_specs))
        for name in ("teacher", "tokenizer"):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, ModelIdentity.from_dict(getattr(self, name)))
        if (self.teacher is None) == (self.tokenizer is None):
            raise ValueError("dataset metadata names exactly one model: a teacher (proxy codes) or a tokenizer")

    @property
    def codes_column(self) -> str:
        """The column holding the codes: proxy_codes (teacher) or tokens (tokenizer)."""
        return PROXY_CODES if self.teacher is not None else TOKENS

    @property
    def model(self) -> ModelIdentity:
        """The model that computed the codes."""
        return self.teacher if self.teacher is not None else self.tokenizer  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        d["view_specs"] = [list(v) for v in self.view_specs]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMetadata:
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for name in ("teacher", "tokenizer"):
            if d.get(name) is not None:
                d[name] = ModelIdentity.from_dict(d[name])
        return cls(**d)

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> DatasetMetadata | None:
        """The metadata a job stored in a file's schema; None if the file has none (not ours)."""
        raw = (schema.metadata or {}).get(METADATA_KEY)
        if not raw:
            return None
        return cls.from_dict(json.loads(raw))


# --------------------------------------------------------------------------------------------
# Rows between the stages of a shard job (one row per shard, in Arrow batches)
#
# Each stage is a Ray Data `map_batches` over Arrow tables (`batch_format="pyarrow"`), one row per
# shard, and each kind of row below declares its columns with fixed Arrow types (`COLUMNS`), so
# every shard's table has the same schema whatever it holds (an empty list, no errors). Large
# binary values travel without copies: a row's blob (`BLOB`, bytes or a numpy array) or list of
# blobs (`BLOBS`, e.g. a shard's decoded images) becomes one Arrow buffer, Ray moves it through the
# object store, and the next stage reads numpy views of that buffer (`Blobs`). (Ray Data's row
# path, `map`, serialised every ~28 MB shard row once more only to estimate its size, and converted
# each value to Python and back; README "Feeding the GPU" has the measurements.)
# Numpy arrays travel as raw bytes plus their shape; quarantine records and statistics as JSON text.

BLOB = "blob"
BLOBS = "blobs"
SHARD_INPUT: dict[str, Any] = {"shard": pa.string(), "name": pa.string()}  # the plan: one row per input file


class Blobs(Sequence):
    """A row's list of binary values read from an Arrow batch: item i is a read-only uint8 view of
    the batch's buffer (no copy); `arrow` is the array itself, to write back without a copy."""

    def __init__(self, array: pa.LargeBinaryArray):
        self.arrow = array
        n = len(array)
        offsets, data = array.buffers()[1:3]
        self._offsets = np.frombuffer(offsets, np.int64, count=n + 1, offset=array.offset * 8)
        self._data = np.frombuffer(data, np.uint8) if data is not None and data.size else np.empty(0, np.uint8)
        self._data.flags.writeable = False  # the batch's buffer may be shared with the next stage

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._data[self._offsets[i]:self._offsets[i + 1]]


def binary_array(values: Sequence, type: pa.DataType = pa.large_binary()) -> pa.Array:
    """Blobs (bytes or numpy arrays) as one Arrow binary array in one buffer: several are copied once
    into it, a single contiguous one is wrapped without a copy, a `Blobs` read from a batch is passed on."""
    if isinstance(values, Blobs):
        return values.arrow if values.arrow.type == type else values.arrow.cast(type)
    views = [np.frombuffer(v, np.uint8) if isinstance(v, bytes | bytearray | memoryview)
             else np.ascontiguousarray(v).reshape(-1).view(np.uint8) for v in values]
    offsets = np.zeros(len(views) + 1, np.int64)
    np.cumsum([v.size for v in views], out=offsets[1:])
    data = views[0] if len(views) == 1 else np.concatenate(views) if views else np.empty(0, np.uint8)
    array = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(views),
                                             [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return array if type == pa.large_binary() else array.cast(type)


def rows_to_table(rows: list[dict[str, Any]], columns: dict[str, Any]) -> pa.Table:
    """Rows (dicts with the keys of `columns`) -> an Arrow table of the declared types."""
    arrays = {}
    for name, kind in columns.items():
        values = [row[name] for row in rows]
        if kind == BLOB:
            arrays[name] = binary_array(values)
        elif kind == BLOBS:
            lengths = np.zeros(len(values) + 1, np.int32)
            np.cumsum([len(v) for v in values], out=lengths[1:])
            flat = values[0] if len(values) == 1 else [b for v in values for b in v]
            arrays[name] = pa.ListArray.from_arrays(pa.array(lengths), binary_array(flat))
        else:
            arrays[name] = pa.array(values, kind)
    return pa.table(arrays)


def table_to_rows(table: pa.Table, columns: dict[str, Any]) -> list[dict[str, Any]]:
    """An Arrow table written by `rows_to_table` -> its rows; blobs as numpy views, `BLOBS` as `Blobs`."""
    rows: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    for name, kind in columns.items():
        column = table.column(name)
        if kind == BLOB:
            chunks = [Blobs(c) for c in column.chunks]
            values: list[Any] = [c[i] for c in chunks for i in range(len(c))]
        elif kind == BLOBS:
            values = [_list_blobs(c, i) for c in column.chunks for i in range(len(c))]
        else:
            values = column.to_pylist()
        for row, value in zip(rows, values):
            row[name] = value
    return rows


def _list_blobs(array: pa.ListArray, i: int) -> Blobs:
    offsets = np.frombuffer(array.buffers()[1], np.int32, count=len(array) + 1, offset=array.offset * 4)
    return Blobs(array.values.slice(int(offsets[i]), int(offsets[i + 1] - offsets[i])))


class ShardRow:
    """A kind of row between two stages: `COLUMNS` (name -> Arrow type, `BLOB` or `BLOBS`) and the
    subclass's `to_row` / `from_row` (the object <-> a dict of those columns)."""

    COLUMNS: ClassVar[dict[str, Any]]

    def to_row(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Any:
        raise NotImplementedError

    @classmethod
    def to_table(cls, items: list[Any]) -> pa.Table:
        return rows_to_table([item.to_row() for item in items], cls.COLUMNS)

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Any]:
        return [cls.from_row(row) for row in table_to_rows(table, cls.COLUMNS)]


def _array(data: Any, shape: list[int], dtype: type) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape([int(s) for s in shape])


def _errors_json(errors: list[SampleErrorRecord]) -> str:
    return json.dumps([dataclasses.asdict(e) for e in errors])


def _errors_from_json(text: str) -> list[SampleErrorRecord]:
    return [SampleErrorRecord(**e) for e in json.loads(text)]


@dataclass
class DecodedShard(ShardRow):
    """A shard's usable samples as base images, plus its quarantine records (decode -> model stage).

    Args:
        shard: input URL; name: output name (pipelines.commit.shard_name).
        keys / labels / sources / members: per sample, as in the dataset.
        images: per sample, the stored base image bytes (b"" when the dataset keeps no image).
        pixels: per sample, the base image as the model sees it, (H, W, 3) uint8 (flat after a stage).
        heights / widths: per sample, the base image's size.
        errors: quarantined samples.
        failed: the shard could not be read at all (missing, I/O error): it is not committed.
    """

    COLUMNS: ClassVar[dict[str, Any]] = {
        "shard": pa.string(), "name": pa.string(), "keys": pa.list_(pa.string()), "labels": pa.list_(pa.int64()),
        "sources": pa.list_(pa.string()), "members": pa.list_(pa.string()), "images": BLOBS, "pixels": BLOBS,
        "heights": pa.list_(pa.int32()), "widths": pa.list_(pa.int32()), "errors": pa.string(), "failed": pa.bool_()}

    shard: str
    name: str
    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    images: Sequence = field(default_factory=list)  # of bytes (a `Blobs` after a stage)
    pixels: Sequence = field(default_factory=list)  # of numpy arrays
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    errors: list[SampleErrorRecord] = field(default_factory=list)
    failed: bool = False

    def add(self, key: str, label: int, source: str, member: str, stored: bytes, pixels: np.ndarray) -> None:
        """Append one usable sample."""
        self.keys.append(key)
        self.labels.append(int(label))
        self.sources.append(source)
        self.members.append(member)
        self.images.append(stored)
        self.pixels.append(np.ascontiguousarray(pixels))
        self.heights.append(int(pixels.shape[0]))
        self.widths.append(int(pixels.shape[1]))

    def __len__(self) -> int:
        return len(self.keys)

    def base_image(self, i: int) -> np.ndarray:
        """Sample i's base image, (H, W, 3) uint8 (after a stage, a read-only view of the batch)."""
        return _array(self.pixels[i], [self.heights[i], self.widths[i], 3], np.uint8)

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deep copy of the pixels
        row["errors"] = _errors_json(self.errors)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DecodedShard:
        d = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        d["errors"] = _errors_from_json(row["errors"])
        d["failed"] = bool(d["failed"])
        return cls(**d)


@dataclass
class EncodedShard(ShardRow):
    """A shard with its codes (model -> write stage). The sample fields are `DecodedShard`'s.

    Args:
        codes: (n, views, codes_per_view) uint16.
        view_offsets: (n, views) int32 crop starts along each image's long side.
        view_flips: (views,) flip of each view.
        stats: summed statistics for the job summary (bf16 agreement, verification).
    """

    COLUMNS: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in DecodedShard.COLUMNS.items() if k != "pixels"},
        "codes": BLOB, "codes_shape": pa.list_(pa.int64()), "view_offsets": BLOB,
        "view_offsets_shape": pa.list_(pa.int64()), "view_flips": pa.list_(pa.bool_()), "stats": pa.string()}

    shard: str
    name: str
    keys: list[str]
    labels: list[int]
    sources: list[str]
    members: list[str]
    images: Sequence
    heights: list[int]
    widths: list[int]
    errors: list[SampleErrorRecord]
    failed: bool
    codes: np.ndarray
    view_offsets: np.ndarray
    view_flips: list[bool]
    stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_decoded(cls, shard: DecodedShard, codes: np.ndarray, view_offsets: np.ndarray, view_flips: list[bool],
                     stats: dict[str, float]) -> EncodedShard:
        return cls(shard.shard, shard.name, shard.keys, shard.labels, shard.sources, shard.members, shard.images,
                   shard.heights, shard.widths, shard.errors, shard.failed, codes, view_offsets, view_flips, stats)

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        row["errors"] = _errors_json(self.errors)
        row["codes"], row["codes_shape"] = self.codes.astype(np.uint16, copy=False), list(self.codes.shape)
        row["view_offsets"] = self.view_offsets.astype(np.int32, copy=False)
        row["view_offsets_shape"] = list(self.view_offsets.shape)
        row["stats"] = json.dumps(self.stats)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EncodedShard:
        d = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        d["errors"] = _errors_from_json(row["errors"])
        d["failed"] = bool(d["failed"])
        d["codes"] = _array(row["codes"], row["codes_shape"], np.uint16)
        d["view_offsets"] = _array(row["view_offsets"], row["view_offsets_shape"], np.int32)
        d["view_flips"] = [bool(f) for f in row["view_flips"]]
        d["stats"] = json.loads(row["stats"])
        return cls(**d)


@dataclass
class ShardResult(ShardRow):
    """What the driver learns about one shard (write stage -> driver): counts, not data.

    Args:
        shard / name: as in `DecodedShard`.
        rows: samples written; errors: its quarantine records; failed: not committed (unreadable).
        bytes: size of the data file written.
        stats: the model stage's summed statistics.
    """

    COLUMNS: ClassVar[dict[str, Any]] = {
        "shard": pa.string(), "name": pa.string(), "rows": pa.int64(), "errors": pa.string(), "failed": pa.bool_(),
        "bytes": pa.int64(), "stats": pa.string()}

    shard: str
    name: str
    rows: int
    errors: list[SampleErrorRecord]
    failed: bool
    bytes: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["errors"] = _errors_json(self.errors)
        row["stats"] = json.dumps(self.stats)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ShardResult:
        return cls(row["shard"], row["name"], int(row["rows"]), _errors_from_json(row["errors"]), bool(row["failed"]),
                   int(row["bytes"]), json.loads(row["stats"]))


@dataclass
class EvaluatedShard(ShardRow):
    """A shard's per-image measurements and its committed side files (evaluation model -> write stage).

    Args:
        shard / name / keys / labels / sources / members / errors / failed: as in `DecodedShard`.
        tokens: (n, N) uint16 tokens of each image's centre crop.
        psnr / ssim / lpips: (n,) float64 per image (lpips all NaN when not measured).
        side_files: per-shard files committed with the shard, by path relative to the output
            (`_stats/<name>.npz`: feature moments and token histogram; `_grids/<name>.parquet`).
        stats: summed statistics for the job summary.
    """

    COLUMNS: ClassVar[dict[str, Any]] = {
        **{k: DecodedShard.COLUMNS[k] for k in ("shard", "name", "keys", "labels", "sources", "members", "errors",
                                               "failed")},
        "tokens": BLOB, "tokens_shape": pa.list_(pa.int64()), "psnr": BLOB, "ssim": BLOB, "lpips": BLOB,
        "side_files": pa.list_(pa.string()), "side_file_bytes": BLOBS, "stats": pa.string()}

    shard: str
    name: str
    keys: list[str]
    labels: list[int]
    sources: list[str]
    members: list[str]
    errors: list[SampleErrorRecord]
    failed: bool
    tokens: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    lpips: np.ndarray
    side_files: dict[str, bytes] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        row["errors"] = _errors_json(self.errors)
        row["tokens"], row["tokens_shape"] = self.tokens.astype(np.uint16, copy=False), list(self.tokens.shape)
        for name in ("psnr", "ssim", "lpips"):
            row[name] = np.asarray(row[name], np.float64)
        # two parallel lists: a dict's keys would become a struct type that differs between shards
        row["side_files"] = sorted(self.side_files)
        row["side_file_bytes"] = [self.side_files[k] for k in row["side_files"]]
        row["stats"] = json.dumps(self.stats)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EvaluatedShard:
        n = len(row["keys"])
        return cls(
            row["shard"], row["name"], list(row["keys"]), [int(x) for x in row["labels"]], list(row["sources"]),
            list(row["members"]), _errors_from_json(row["errors"]), bool(row["failed"]),
            _array(row["tokens"], row["tokens_shape"], np.uint16),
            *(_array(row[k], [n], np.float64) for k in ("psnr", "ssim", "lpips")),
            side_files={k: bytes(v) for k, v in zip(row["side_files"], row["side_file_bytes"])},
            stats=json.loads(row["stats"]))


@dataclass
class SampledChunk(ShardRow):
    """A chunk of generated images (sampling job: model stage -> write stage).

    Args:
        index: the chunk's place in the plan; name: its output name (`chunk-000000`).
        labels / indices: per image, its class and its index among that class's samples.
        tokens: (n, N) uint16 generated token ids.
        images: (n, H, W, 3) uint8, the tokenizer's decoding as the official evaluation converts it.
        stats: summed timings for the job summary (generate_s, decode_s, measure_s).
        stats_file: the chunk's features / logits file for gFID and IS (empty: not measured).
    """

    COLUMNS: ClassVar[dict[str, Any]] = {
        "index": pa.int64(), "name": pa.string(), "labels": pa.list_(pa.int64()), "indices": pa.list_(pa.int64()),
        "tokens": BLOB, "tokens_shape": pa.list_(pa.int64()), "images": BLOB, "images_shape": pa.list_(pa.int64()),
        "stats": pa.string(), "stats_file": BLOB}

    index: int
    name: str
    labels: list[int]
    indices: list[int]
    tokens: np.ndarray
    images: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)
    stats_file: bytes = b""

    def to_row(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "labels": self.labels, "indices": self.indices,
                "tokens": self.tokens.astype(np.uint16, copy=False), "tokens_shape": list(self.tokens.shape),
                "images": self.images.astype(np.uint8, copy=False), "images_shape": list(self.images.shape),
                "stats": json.dumps(self.stats), "stats_file": self.stats_file}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SampledChunk:
        return cls(int(row["index"]), row["name"], [int(v) for v in row["labels"]], [int(v) for v in row["indices"]],
                   _array(row["tokens"], row["tokens_shape"], np.uint16),
                   _array(row["images"], row["images_shape"], np.uint8), json.loads(row["stats"]),
                   bytes(row["stats_file"]))
