"""Driver side of the sampling job, once every chunk is committed: what the batch is, and the `.npz`.

    describe_batch   samples, classes, per-class counts, and whether the batch is the paper's 50k
                     (1000 classes x 50, the ADM protocol); a batch that is not is never called one
    write_adm_npz    the batch the ADM evaluator (guided-diffusion evaluations/evaluator.py) reads:
                     `arr_0` (N, H, W, 3) uint8 NHWC, `arr_1` (N,) int64 labels (as guided-diffusion's
                     image_sample.py saves them), streamed chunk by chunk from the committed PNGs,
                     uncompressed, with fixed zip timestamps: the same chunks give the same bytes
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import schema as S
from ..commit import data_url
from ..storage import atomic_open, get_fs, join_url, read_bytes
from .plan import Chunk

PAPER_CLASSES = 1000
PAPER_PER_CLASS = 50
PAPER_SAMPLES = PAPER_CLASSES * PAPER_PER_CLASS  # the "50k" of gFID-50k
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry: no clock in the bytes


def describe_batch(labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """What a batch of generated images is, by its labels; `paper_50k` only for exactly 50 images of
    each of 1000 classes (fewer samples inflate FID, official TiTok issue #65; so do missing classes).

    Returns:
        samples, num_classes, classes_sampled, per_class_min / per_class_max, balanced (every class
        of the generator sampled equally often), paper_50k, and not_paper_50k: why not (None if it is).
    """
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=num_classes) if len(labels) else np.zeros(num_classes, np.int64)
    sampled = counts[counts > 0]
    balanced = bool(len(labels)) and len(sampled) == num_classes and bool(sampled.min() == sampled.max())
    why = []
    if len(labels) != PAPER_SAMPLES:
        why.append(f"{len(labels):,} samples, not {PAPER_SAMPLES:,}")
    if num_classes != PAPER_CLASSES:
        why.append(f"a {num_classes}-class generator, not ImageNet's {PAPER_CLASSES}")
    if len(sampled) < num_classes:
        why.append(f"{num_classes - len(sampled)} of {num_classes} classes have no sample")
    if len(sampled) and sampled.min() != sampled.max():
        why.append(f"unbalanced: {int(sampled.min())} to {int(sampled.max())} samples per class")
    elif len(sampled) and int(sampled.max()) != PAPER_PER_CLASS:
        why.append(f"{int(sampled.max())} per class, not {PAPER_PER_CLASS}")
    return {"samples": int(len(labels)), "num_classes": num_classes, "classes_sampled": int(len(sampled)),
            "per_class_min": int(sampled.min()) if len(sampled) else 0,
            "per_class_max": int(sampled.max()) if len(sampled) else 0,
            "balanced": balanced, "paper_50k": not why, "not_paper_50k": "; ".join(why) or None}


def read_chunk_table(table_dir: str, chunk: Chunk, storage_options: dict | None = None) -> pa.Table:
    """A committed chunk's rows (in `<output>/tokens`), checked against the plan (the right images, in order)."""
    table = pq.read_table(pa.BufferReader(read_bytes(data_url(table_dir, chunk.name), storage_options)))
    labels = np.asarray(table.column(S.LABEL).to_pylist(), np.int64)
    indices = np.asarray(table.column(S.SAMPLE_INDEX).to_pylist(), np.int64)
    if not (np.array_equal(labels, chunk.labels) and np.array_equal(indices, chunk.indices)):
        raise RuntimeError(f"{data_url(table_dir, chunk.name)} does not hold the images the plan assigns to "
                           f"{chunk.name}; rerun with --overwrite")
    return table


def chunk_images(output: str, table: pa.Table, storage_options: dict | None = None) -> np.ndarray:
    """A chunk's images, (n, H, W, 3) uint8, from its committed PNGs (fetched concurrently)."""
    urls = [join_url(output, *f.split("/")) for f in table.column(S.FILE).to_pylist()]
    fs, _ = get_fs(urls[0], storage_options=storage_options)
    paths = [get_fs(u, storage_options=storage_options)[1] for u in urls]
    blobs = fs.cat(paths)
    return np.stack([np.asarray(Image.open(io.BytesIO(blobs[p])).convert("RGB")) for p in paths])


def npz_name(samples: int, height: int, width: int) -> str:
    """The ADM naming: samples_<N>x<H>x<W>x3.npz, so the file says how many images it holds."""
    return f"samples_{samples}x{height}x{width}x3.npz"


def write_adm_npz(url: str, images: Iterator[np.ndarray], shape: tuple[int, int, int, int], labels: np.ndarray,
                  storage_options: dict | None = None) -> str:
    """Stream `images` (batches of (b, H, W, 3) uint8 adding up to `shape`) and `labels` into an npz
    at `url`, atomically; returns its SHA-256. Memory: one batch at a time, whatever N is."""
    digest = hashlib.sha256()

    class Hashing(io.RawIOBase):  # the zip stream, hashed on its way to the file
        def __init__(self, f):
            self.f, self.pos = f, 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            digest.update(b)
            self.pos += len(b)
            return self.f.write(b)

        def tell(self) -> int:
            return self.pos

        def flush(self) -> None:
            self.f.flush()

    with atomic_open(url, "wb", storage_options) as f:
        # an unseekable stream for zipfile: it then writes sizes after each entry (data descriptors)
        # instead of seeking back, which every zip reader (numpy, the ADM evaluator) accepts
        with zipfile.ZipFile(Hashing(f), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo("arr_0.npy", date_time=_ZIP_TIME), "w", force_zip64=True) as out:
                np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
                written = 0
                for batch in images:
                    assert batch.dtype == np.uint8 and batch.shape[1:] == shape[1:], batch.shape
                    out.write(np.ascontiguousarray(batch).tobytes())
                    written += len(batch)
                assert written == shape[0], (written, shape)
            with zf.open(zipfile.ZipInfo("arr_1.npy", date_time=_ZIP_TIME), "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asarray(labels, np.int64), allow_pickle=False)
    return digest.hexdigest()
