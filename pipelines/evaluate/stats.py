"""A shard's statistics file, `_stats/<shard>.npz`: what the corpus-level metrics need of each shard.

    real / fake     `titok_core.metrics.FeatureMoments` of the input crops' and the reconstructions'
                    features (n, sum, sum of outer products; float64). `real` is absent when the run
                    takes the reference from saved statistics (--reference-stats).
    token_counts    (C,) int64 histogram of the tokens (codebook usage and perplexity)

Written by the model stage and committed with the shard; the driver merges the files of every
committed shard by addition, in shard-name order, so the result depends neither on the number of
workers nor on the order shards finish. Plain arrays only (np.load needs no pickle); a moments
matrix is symmetric and is stored as its upper triangle (2048-d: 16.8 MB instead of 33.6 MB).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from titok_core.metrics import FeatureMoments


def _moments_arrays(m: FeatureMoments, prefix: str) -> dict[str, np.ndarray]:
    outer = m.outer.cpu().numpy()
    return {f"{prefix}_n": np.array(m.n, np.int64), f"{prefix}_sum": m.total.cpu().numpy(),
            f"{prefix}_outer_triu": outer[np.triu_indices(outer.shape[0])]}


def _moments_from(arrays: dict[str, np.ndarray], prefix: str) -> FeatureMoments:
    total = arrays[f"{prefix}_sum"].astype(np.float64)
    d = total.shape[0]
    outer = np.zeros((d, d), np.float64)
    outer[np.triu_indices(d)] = arrays[f"{prefix}_outer_triu"]
    outer = outer + np.triu(outer, 1).T
    return FeatureMoments(int(arrays[f"{prefix}_n"]), torch.from_numpy(total), torch.from_numpy(outer))


@dataclass
class ShardStats:
    """Feature moments (real may be None) and the token histogram of a set of images."""

    real: FeatureMoments | None
    fake: FeatureMoments
    token_counts: np.ndarray

    @classmethod
    def zeros(cls, dim: int, codebook_size: int, real: bool = True,
              device: torch.device | str = "cpu") -> ShardStats:
        return cls(FeatureMoments.zeros(dim, device) if real else None, FeatureMoments.zeros(dim, device),
                   np.zeros(codebook_size, np.int64))

    def __add__(self, other: ShardStats) -> ShardStats:
        if (self.real is None) != (other.real is None) or self.token_counts.shape != other.token_counts.shape:
            raise ValueError("statistics of different kinds (reference features or codebook size) cannot be merged")
        real = None if self.real is None else self.real + other.real
        return ShardStats(real, self.fake + other.fake, self.token_counts + other.token_counts)

    def to_bytes(self) -> bytes:
        arrays = {"token_counts": self.token_counts.astype(np.int64), **_moments_arrays(self.fake, "fake")}
        if self.real is not None:
            arrays.update(_moments_arrays(self.real, "real"))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        real = _moments_from(arrays, "real") if "real_n" in arrays else None
        return cls(real, _moments_from(arrays, "fake"), arrays["token_counts"].astype(np.int64))

