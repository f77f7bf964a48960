"""The feature network behind rFID, where its weights come from, and the FID of two statistics.

    inception_weights   the FID Inception-v3 weights as a local file: --inception-weights (path, URL,
                        s3://), else the library's cache under TORCH_HOME, else a download; offline
                        without them one line naming both ways
    FeatureSpec         which network a run measures with; its identity is recorded and checked
    build_feature_net   FeatureSpec -> module: (B, 3, H, W) uint8 -> (B, D) float64 features;
                        `net.logits(features)` -> (B, K) the classifier logits of the Inception Score
    frechet_distance    torch-fidelity's FID of two (mu, sigma)

The network is torch-fidelity's `FeatureExtractorInceptionV3`, the class torchmetrics' FID wraps and
the official TiTok evaluator copies: the TF-ported 2015-12-05 Inception (`pt_inception-2015-12-05-
6726825d.pth` of pytorch-fid is the same file as torch-fidelity's `weights-inception-2015-12-05-
6726825d.pth`), run in float64 with TF1-style bilinear resizing to 299. The official evaluator
keeps the 2048-d pool features in float64; torch-fidelity 0.4 casts them to float32 on return, so
they are read at the pooling layer instead (a forward hook), before that cast. (It also maps its
"float64" option to float32, so the network is put into float64 here.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..storage import fetch_to_cache

# torch-fidelity's and pytorch-fid's names for the same file (the suffix is its SHA-256 prefix).
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
OFFICIAL_INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_NETWORK = ("torch-fidelity FeatureExtractorInceptionV3 (TF-ported Inception-v3 2015-12-05), pool3 2048-d, "
                     "float64, TF1-style bilinear resize to 299")


def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return URL_INCEPTION_V3


def inception_hub_files() -> list[str]:
    """Where the library's cache (torch hub, under TORCH_HOME) keeps the weights; they may not exist."""
    return [os.path.join(torch.hub.get_dir(), "checkpoints", name) for name in INCEPTION_FILES]


def inception_weights(uri: str | None = None) -> str:
    """Local path of the FID Inception weights: `uri` fetched (path, URL, s3://), else the library's
    cache, else downloaded once into our cache. Offline without them: RuntimeError naming both ways."""
    if uri is not None:
        return fetch_to_cache(uri, what="FID Inception weights", option="--inception-weights")
    for path in inception_hub_files():
        if os.path.isfile(path):
            return path
    try:
        return fetch_to_cache(inception_url(), what="FID Inception weights", option="--inception-weights")
    except RuntimeError as e:
        hub = inception_hub_files()[1]
        reason = str(e).split(" (", 1)[-1].split(";")[0]
        raise RuntimeError(f"rFID needs the FID Inception-v3 weights: {hub} is missing and the download failed "
                           f"({reason}); pass --inception-weights /path/to/{INCEPTION_FILES[1]} (path, URL or "
                           f"s3://), or put that file at {hub}") from None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionPool3(nn.Module):
    """torch-fidelity's Inception-v3 as the FID feature network: (B, 3, H, W) uint8 -> (B, 2048) float64.

    Args:
        weights: local file in torch-fidelity's / pytorch-fid's format. It is first read with
            `torch.load(weights_only=True)` (torch-fidelity itself unpickles it without that guard),
            so a file that would run code, or is no state dict, is refused with one line.
    """

    num_features = 2048

    def __init__(self, weights: str, option: str = "--inception-weights"):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        try:
            sd = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{option} {weights} is not a plain state-dict file ({type(e).__name__}: {first})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{option} {weights} does not hold a flat state dict of tensors")
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights,
                                                   feature_extractor_internal_dtype="float64")
        except RuntimeError as e:  # load_state_dict(strict=True) of another network's weights
            detail = " ".join(str(e).split())[:240]
            raise ValueError(f"{option} {weights} is not the FID Inception-v3 ({detail})") from None
        # torch-fidelity 0.4 maps "float64" to torch.float32 (helpers.text_to_dtype), so the network
        # would silently run in float32; the official evaluator runs it in float64. Its forward casts
        # the input to this attribute's dtype.
        self.net.feature_extractor_internal_dtype = torch.float64
        self.net.double()
        self._pool: torch.Tensor | None = None
        self.net.AvgPool.register_forward_hook(self._keep_pool)

    def _keep_pool(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._pool = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.net(images)
        pool, self._pool = self._pool, None
        return pool.flatten(1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 2048) pool features -> (B, 1008) logits without the bias, float64: torch-fidelity's
        `logits_unbiased`, what the ADM evaluator's softmax reads for the Inception Score."""
        return features.double() @ self.net.fc.weight.double().T


class RandomFeatures(nn.Module):
    """Smoke tests only: a small conv net with seeded random weights, (B, 3, H, W) uint8 -> (B, dim) float64.

    Runs in float64 like the Inception path; the same seed gives the same weights in every process,
    so the statistics of different workers merge. Its FID is not rFID and is never reported as such.
    A random linear head (`logits`, `classes` outputs) stands in for Inception's classifier.
    """

    def __init__(self, dim: int = 16, seed: int = 0, classes: int = 10):
        super().__init__()
        self.num_features = dim
        self.net = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.Conv2d(8, dim, 4, stride=4), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in (self.net[0], self.net[2]):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64) * (2 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g, dtype=torch.float64) * 0.1)
        # drawn after the convolutions, so the features are the same as without a head
        self.head = nn.Linear(dim, classes, bias=False).double()
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(classes, dim, generator=g, dtype=torch.float64) * dim ** -0.5)
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.double() / 255.0)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.double())


@dataclass(frozen=True)
class FeatureSpec:
    """The feature network of a run, buildable in any process.

    Args:
        kind: "inception" (rFID) or "random" (`RandomFeatures`, smoke tests only).
        weights: inception: the URI the user gave (None: the library's cache / a download); every
            node resolves it itself.
        sha256: inception: the weights' SHA-256; every node checks its file against it.
        dim / seed: random: feature size and weight seed.
    """

    kind: str
    weights: str | None = None
    sha256: str | None = None
    dim: int = 2048
    seed: int = 0

    @classmethod
    def inception(cls, uri: str | None) -> FeatureSpec:
        """Resolve the weights here (fails fast, with one line) and pin their hash for the workers."""
        path = inception_weights(uri)
        spec = cls("inception", uri, file_sha256(path))
        InceptionPool3(path)  # refuses a file that is no FID Inception before any worker starts
        return spec

    @classmethod
    def random(cls, dim: int = 16, seed: int = 0) -> FeatureSpec:
        return cls("random", dim=dim, seed=seed)

    @property
    def is_rfid(self) -> bool:
        return self.kind == "inception"

    def identity(self) -> dict[str, Any]:
        """What a result records (and a resumed run must match) about its features."""
        if self.kind == "random":
            return {"network": "random small conv net (smoke test; its FID is not rFID)", "dim": self.dim,
                    "seed": self.seed}
        return {"network": INCEPTION_NETWORK, "dim": 2048, "weights_sha256": self.sha256,
                "official_weights": bool(self.sha256 and self.sha256.startswith(OFFICIAL_INCEPTION_SHA256_PREFIX))}


def build_feature_net(spec: FeatureSpec, device: torch.device | str = "cpu") -> nn.Module:
    """The module `spec` names, on `device`, in eval mode."""
    if spec.kind == "random":
        return RandomFeatures(spec.dim, spec.seed).to(device)
    if spec.kind != "inception":
        raise ValueError(f"unknown feature network {spec.kind!r}")
    path = inception_weights(spec.weights)
    if spec.sha256 and file_sha256(path) != spec.sha256:
        raise RuntimeError(f"the FID Inception weights on this node ({path}) differ from the driver's "
                           f"(sha256 {spec.sha256[:12]}...); pass the same file to every node with --inception-weights")
    return InceptionPool3(path).to(device).eval()


def frechet_distance(mu1: torch.Tensor | np.ndarray, sigma1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, sigma2: torch.Tensor | np.ndarray) -> float:
    """FID between N(mu1, sigma1) and N(mu2, sigma2), torch-fidelity's maths, float64."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    def as64(x: torch.Tensor | np.ndarray) -> np.ndarray:
        return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float64)

    return float(fid_statistics_to_metric({"mu": as64(mu1), "sigma": as64(sigma1)},
                                          {"mu": as64(mu2), "sigma": as64(sigma2)}, verbose=False)[KEY_METRIC_FID])
