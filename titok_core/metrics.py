"""Image and token metrics (no gradients): the one PSNR of the project, codebook statistics, the
streaming feature moments behind FID, and the streaming sums behind the Inception Score.

Legend: B batch, C codebook size (InceptionScore: classes of the classifier), D feature size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@torch.no_grad()
def psnr(inputs: Tensor, reconstructions: Tensor, reduction: str = "mean", max_value: float = 1.0) -> Tensor:
    """PSNR in dB of reconstructions clamped to [0, max_value].

    Args:
        inputs / reconstructions: (B, ...) images, e.g. (B, 3, H, W) in [0, 1] (or uint8 with max_value 255).
        reduction: "none" -> (B,) per image; "mean" / "sum" over the batch.

    An exact reconstruction counts as 100 dB (MSE floored at 1e-10 of max_value^2).
    """
    x = inputs.double()
    y = reconstructions.double().clamp(0, max_value)
    mse = (y - x).pow(2).flatten(1).mean(1).clamp_min(1e-10 * max_value**2)
    return reduce(10 * torch.log10(max_value**2 / mse), reduction)


def reduce(per_image: Tensor, reduction: str) -> Tensor:
    """(B,) per-image values -> themselves ("none"), or their "mean" / "sum"."""
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction {reduction!r}: use 'none', 'mean' or 'sum'")


def codebook_stats(counts: Tensor) -> tuple[float, float]:
    """(usage, perplexity) of a histogram of token ids.

    Args:
        counts: (C,) how often each codebook entry was chosen.

    Returns:
        usage: fraction of the C entries chosen at least once.
        perplexity: exp(entropy) of the empirical distribution, in [1, C] (C: uniform use).
    """
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float((counts > 0).double().mean()), float(torch.exp(-(p * p.log()).sum()))


@dataclass
class FeatureMoments:
    """Streaming first and second moments of feature vectors in float64: all that FID needs of a set.

    Moments of disjoint sets merge by addition (`+`), so per-shard moments computed anywhere, in
    any order, give the moments of the whole set; this is how the official TiTok evaluator and
    torchmetrics accumulate FID statistics (float64 sums of features and of their outer products).

    Args:
        n: number of feature vectors.
        total: (D,) float64, their sum.
        outer: (D, D) float64, the sum of their outer products x x^T.
    """

    n: int
    total: Tensor
    outer: Tensor

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str = "cpu") -> FeatureMoments:
        return cls(0, torch.zeros(dim, dtype=torch.float64, device=device),
                   torch.zeros(dim, dim, dtype=torch.float64, device=device))

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        """Add a batch. features: (B, D), any float dtype (summed in float64)."""
        f = features.detach().to(self.total.device, torch.float64).reshape(features.shape[0], -1)
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        return FeatureMoments(self.n + other.n, self.total + other.total.to(self.total.device),
                              self.outer + other.outer.to(self.outer.device))

    def mean_and_covariance(self) -> tuple[Tensor, Tensor]:
        """(mu (D,), sigma (D, D)): the mean and the unbiased (n - 1) covariance, float64."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


# The ADM evaluator (guided-diffusion evaluations/evaluator.py) scores IS on splits of 5,000 images,
# consecutive in the batch's order; 50,000 images make 10 splits.
ADM_IS_SPLIT = 5000


class InceptionScore:
    """Streaming Inception Score of images fed in their batch order, as the ADM evaluator computes it:
    consecutive splits of `split_size` images, per split exp(mean_x KL(p(y|x) || p_split(y))), then
    the mean (and standard deviation) over the splits. float64 throughout.

    Per split it keeps n, the sum of p(y|x) and the sum of sum_y p log p, since
    mean_x KL = sum(p log p) / n - sum_y q log q with q = sum(p) / n; so any batching of the same
    images in the same order gives the same score (up to float64 summation order).

    Args:
        split_size: images per split (ADM: 5,000; fewer images than that make one split).
    """

    def __init__(self, split_size: int = ADM_IS_SPLIT):
        self.split_size = split_size
        self.n = 0
        self.splits: list[tuple[int, Tensor, float]] = []  # per split: (n, sum p (C,), sum of p log p)

    @torch.no_grad()
    def update(self, logits: Tensor) -> None:
        """Add the next images of the batch. logits: (B, C), the classifier's logits (ADM: unbiased)."""
        logits = logits.detach().to("cpu", torch.float64)
        p = logits.softmax(dim=1)
        plogp = (p * logits.log_softmax(dim=1)).sum(1)
        i = 0
        while i < len(p):
            k = self.n // self.split_size
            take = min((k + 1) * self.split_size - self.n, len(p) - i)
            if k == len(self.splits):
                self.splits.append((0, torch.zeros(p.shape[1], dtype=torch.float64), 0.0))
            n, total, ent = self.splits[k]
            self.splits[k] = (n + take, total + p[i:i + take].sum(0), ent + float(plogp[i:i + take].sum()))
            self.n += take
            i += take

    def compute(self) -> tuple[float, float]:
        """(mean, std) of the per-split scores (std over splits, ddof 0, as torch-fidelity reports it)."""
        if not self.splits:
            raise ValueError("an Inception Score needs at least one image")
        scores = []
        for n, total, ent in self.splits:
            q = total / n
            scores.append(float(torch.exp(ent / n - torch.special.xlogy(q, q).sum())))
        t = torch.tensor(scores, dtype=torch.float64)
        return float(t.mean()), float(t.std(unbiased=False))
