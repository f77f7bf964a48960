"""worst.png / best.png: the images the tokenizer reconstructs worst and best, input | reconstruction.

Ranked by LPIPS (PSNR when the run measures no LPIPS), ties broken by key. Each shard keeps its own
`rows` worst and `rows` best pairs (`_grids/<shard>.parquet`, PNG, committed with the shard), which
always contain the global worst and best; the driver picks those from the committed shards, so the
grids, like every metric, do not depend on the number of workers, the shard order or a resume.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CANDIDATES_SCHEMA = pa.schema([
    pa.field("key", pa.string()), pa.field("label", pa.int32()), pa.field("side", pa.string()),
    pa.field("badness", pa.float64()), pa.field("png", pa.binary()),
])


def badness(psnr: np.ndarray, lpips: np.ndarray | None) -> tuple[str, np.ndarray]:
    """(metric name, per-image badness: higher is worse): LPIPS if measured, else -PSNR."""
    if lpips is not None and not np.isnan(lpips).all():
        return "lpips", np.asarray(lpips, np.float64)
    return "psnr", -np.asarray(psnr, np.float64)


def _png(pair: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pair).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class Candidates:
    """A shard's `rows` worst and `rows` best images so far, kept as (badness, key, label, input | recon)."""

    rows: int
    worst: list[tuple[float, str, int, np.ndarray]] = field(default_factory=list)
    best: list[tuple[float, str, int, np.ndarray]] = field(default_factory=list)

    def offer(self, keys: list[str], labels: list[int], bad: np.ndarray, real: np.ndarray, fake: np.ndarray) -> None:
        """A batch: keys, labels, badness (B,), inputs and reconstructions (B, H, W, 3) uint8."""
        new = [(float(b), k, int(lab), np.concatenate([r, f], axis=1))
               for k, lab, b, r, f in zip(keys, labels, bad, real, fake)]
        self.worst = sorted(self.worst + new, key=lambda c: (-c[0], c[1]))[: self.rows]
        self.best = sorted(self.best + new, key=lambda c: (c[0], c[1]))[: self.rows]

    def to_bytes(self) -> bytes:
        rows = [(side, c) for side, cs in (("worst", self.worst), ("best", self.best)) for c in cs]
        table = pa.Table.from_pylist([{"key": c[1], "label": c[2], "side": side, "badness": c[0], "png": _png(c[3])}
                                      for side, c in rows], schema=CANDIDATES_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="none")  # PNG bytes do not compress further
        return buf.getvalue()


def pick(tables: list[pa.Table], rows: int) -> dict[str, list[dict]]:
    """The global `rows` worst and best from every shard's candidates: {"worst": [...], "best": [...]}."""
    cands = pa.concat_tables(tables).to_pylist() if tables else []
    worst = sorted((c for c in cands if c["side"] == "worst"), key=lambda c: (-c["badness"], c["key"]))[:rows]
    best = sorted((c for c in cands if c["side"] == "best"), key=lambda c: (c["badness"], c["key"]))[:rows]
    return {"worst": worst, "best": best}


def grid_png(candidates: list[dict]) -> bytes:
    """One row per image, input on the left, reconstruction on the right."""
    pairs = [np.asarray(Image.open(io.BytesIO(c["png"])).convert("RGB")) for c in candidates]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(pairs, axis=0)).save(buf, format="PNG")
    return buf.getvalue()
