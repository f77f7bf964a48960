"""Generator training input: the token Parquet dataset -> per-worker batches of (one stored view's
tokens, class label).

Driver side (before any worker starts):
    inspect_token_dataset   list the files, read their footers: rows, the `titok` metadata (the
                            tokenizer's identity, codebook size, tokens per view, views), and the
                            token and label ranges by the Parquet statistics; one-line `DatasetError`s
    check_token_layout      the dataset fits the generator config: codebook size, token count, labels
    build_token_dataset     Ray Data: one read task per file (key, label, tokens only) -> shuffled block
                            order; Ray Train splits it across the workers (`get_dataset_shard`)

Worker side:
    TokenSampler            per sample and epoch one stored view, chosen by (seed, epoch, key) exactly
                            as stage-1 training chooses views (`data.choose_view`); tokens and labels
                            checked batch by batch

Batches go through `data.iterate_batches` like the tokenizer's, so resume, the deterministic order and
the in-memory cache of small datasets work the same way. No tokenizer runs here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .. import schema
from ..schema import DatasetMetadata
from .data import (
    MATERIALIZE_BELOW_BYTES,
    DatasetError,
    DatasetInfo,
    choose_view,
    code_range,
    read_files,
    scan_dataset,
    widen_range,
)

TOKEN_COLUMNS = [schema.KEY, schema.LABEL, schema.TOKENS]


@dataclass(frozen=True)
class TokenDatasetInfo(DatasetInfo):
    """What generator training needs to know about a token dataset (`code_range` holds the token range).

    Args:
        label_range: (smallest, largest class label, a file holding one of them) by the files'
            Parquet statistics; None when the files carry none.
    """

    label_range: tuple[int, int, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "label_range": list(self.label_range) if self.label_range else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenDatasetInfo:
        base = DatasetInfo.from_dict(d)
        return cls(base.files, base.rows, base.bytes, base.metadata, base.code_range,
                   tuple(d["label_range"]) if d.get("label_range") else None)


def inspect_token_dataset(data: str, storage_options: dict | None = None) -> TokenDatasetInfo:
    """Files, row count, metadata and value ranges of the token dataset at `data` (directory, glob, list, URL).

    Raises:
        DatasetError: nothing there, no rows, not a token dataset, or files written by different runs.
    """
    def kind_error(arrow_schema: pa.Schema, meta: DatasetMetadata | None) -> str | None:
        if meta is not None and meta.tokenizer is not None and schema.TOKENS in arrow_schema.names:
            return None
        return "a proxy-code file (jobs/precompute_proxy.py)" if meta is not None and meta.teacher is not None \
            else "not a token file (no tokens column or titok metadata)"

    files = scan_dataset(data, storage_options, maker="jobs/tokenize_dataset.py", kind_error=kind_error,
                         layout=_layout, layout_names="tokenizer / views")
    tokens = labels = None
    for f in files:
        tokens = widen_range(tokens, *code_range(f.footer, schema.TOKENS), f.url)
        labels = widen_range(labels, *code_range(f.footer, schema.LABEL), f.url)
    return TokenDatasetInfo(tuple(f.url for f in files), sum(f.footer.num_rows for f in files),
                            sum(f.size for f in files), files[0].metadata, tokens, labels)


def _layout(meta: DatasetMetadata) -> tuple:
    return meta.views, meta.codes_per_view, meta.codebook_size, meta.model.weights_sha256


def check_token_layout(info: TokenDatasetInfo, *, codebook_size: int, num_latent_tokens: int, num_classes: int,
                       preset: str) -> None:
    """The dataset's tokens and labels must be what the generator predicts and is conditioned on.

    Raises:
        DatasetError: naming the mismatching value on both sides and the fix.
    """
    m = info.metadata
    tokenizer = m.model.config
    checks = [("codebook size", m.codebook_size, codebook_size, "codebook_size"),
              ("tokens per image", m.codes_per_view, num_latent_tokens, "num_latent_tokens")]
    for what, got, want, key in checks:
        if got != want or tokenizer.get(key, want) != want:
            raise DatasetError(f"--data: the dataset's tokenizer ({m.model.kind}, {m.model.source}) has {what} {got}, "
                               f"but generator preset {preset!r} has {want}; pick the --preset of that tokenizer, or "
                               "tokenize the data with a tokenizer of the preset's size")
    if info.code_range is not None:
        low, high, url = info.code_range
        if not 0 <= low <= high < codebook_size:
            raise DatasetError(f"--data: {url} holds tokens {low}..{high}, outside the tokenizer's codebook "
                               f"[0, {codebook_size}); the file is damaged: delete it and its _success record, "
                               "and rerun jobs/tokenize_dataset.py")
    if info.label_range is not None:
        low, high, url = info.label_range
        if not 0 <= low <= high < num_classes:
            raise DatasetError(f"--data: {url} holds class labels {low}..{high}, but generator preset {preset!r} has "
                               f"{num_classes} classes [0, {num_classes}); tokenize with --num-classes "
                               f"{num_classes}, or add a recipe whose generator has more classes")


def build_token_dataset(info: TokenDatasetInfo, seed: int, storage_options: dict | None = None,
                        env: dict[str, str] | None = None):
    """The Ray Dataset the trainer splits across workers: key, label and tokens of every row (as
    `data.build_dataset`, whose read task it reuses)."""
    import ray
    ray.data.DataContext.get_current().enable_progress_bars = False  # the trainer logs its own progress
    remote_args = {"runtime_env": {"env_vars": env}} if env else {}
    ds = ray.data.from_items([{"file": u} for u in info.files], override_num_blocks=len(info.files))
    ds = ds.map_batches(read_files, batch_size=1,
                        fn_kwargs={"columns": TOKEN_COLUMNS, "storage_options": storage_options}, **remote_args)
    if info.bytes < MATERIALIZE_BELOW_BYTES:
        ds = ds.materialize()
    return ds.randomize_block_order(seed=seed)


@dataclass(frozen=True)
class TokenSampler:
    """Raw dataset batch -> {"tokens": (B, N) int64, "labels": (B,) int64, "views": (B,), "keys": (B,)}.

    Args:
        seed: recipe seed (view choice, as in stage-1 training).
        codebook_size / num_classes: tokens must lie in [0, codebook_size), labels in [0, num_classes)
            (checked per batch, naming the file and key).
    """

    seed: int
    codebook_size: int
    num_classes: int

    def __call__(self, batch: dict[str, np.ndarray], epoch: int) -> dict[str, np.ndarray]:
        keys = batch[schema.KEY]
        stored = batch[schema.TOKENS]
        views = np.array([choose_view(self.seed, epoch, str(k), len(v)) for k, v in zip(keys, stored)], np.int64)
        tokens = np.stack([np.asarray(stored[i][v], dtype=np.int64) for i, v in enumerate(views)])
        labels = np.asarray(batch[schema.LABEL], dtype=np.int64)
        bad_tokens = (tokens < 0).any(1) | (tokens >= self.codebook_size).any(1)
        bad_labels = (labels < 0) | (labels >= self.num_classes)
        if bad_tokens.any() or bad_labels.any():
            i = int(np.flatnonzero(bad_tokens | bad_labels)[0])
            source = batch[schema.SOURCE_FILE][i] if schema.SOURCE_FILE in batch else "the dataset"
            what = (f"class label {labels[i]} is outside the generator's [0, {self.num_classes})" if bad_labels[i] else
                    f"token {int(tokens[i].max())} is outside the tokenizer's codebook [0, {self.codebook_size})")
            raise DatasetError(f"--data: {source}, sample {keys[i]}: {what}")
        return {"tokens": tokens, "labels": labels, "views": views, "keys": np.asarray(keys, dtype=object)}
