"""Model stage of the evaluation: a shard's base images -> centre crops -> reconstructions -> measurements.

One actor holds the tokenizer (TiTok released / stage-2 form, or the MaskGIT-VQGAN teacher itself),
the feature network and LPIPS, on its GPU when it has one. Per shard it returns every image's
tokens, PSNR, SSIM and LPIPS, plus two side files committed with the shard: the feature moments and
token histogram (`stats.ShardStats`) and the worst / best candidates (`grids.Candidates`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from titok_core import MaskGITVQGAN
from titok_core.metrics import psnr

from .. import schema as S
from ..encode.model import inference_layout, use_bf16
from ..preprocess import CENTER, apply_view, to_model_input, to_uint8
from ..runtime import load_lpips, load_model_uri, pick_device
from .features import FeatureSpec, build_feature_net
from .grids import Candidates, badness
from .stats import ShardStats

# SSIM as Wang et al. and skimage's gaussian_weights=True: sigma 1.5, 11 taps, the border a window
# does not fit excluded.
SSIM_SIGMA = 1.5
SSIM_BORDER = 5


@torch.no_grad()
def ssim(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of uint8 images (B, 3, H, W) -> (B,) float64 (see protocol.PROTOCOL["ssim"]).

    torchmetrics computes the SSIM map (reflect-padded to full size); averaging it without the
    5-pixel border gives skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)`: within 1e-8 in float64, 1e-4 per image in the
    float32 used here (the mean over many images: about 1e-5), because torch's float64 depthwise
    convolution is 6x slower on CPU.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure
    _, full = structural_similarity_index_measure(fake.float() / 255, real.float() / 255, sigma=SSIM_SIGMA,
                                                  data_range=1.0, return_full_image=True)
    b = SSIM_BORDER
    return full[..., b:-b, b:-b].double().flatten(1).mean(1)


class MeasureReconstructions:
    """Ray Data callable class: `DecodedShard` rows -> `EvaluatedShard` rows.

    Args:
        model_uri / option: the tokenizer (path, URL, s3://) and the option that named it.
        crop: side of the centre crop (the protocol's 256).
        batch_size: images per forward pass.
        precision: the tokenizer's precision, auto | fp32 | bf16 (metrics are always fp32 / fp64).
        threads: torch intra-op threads (None: torch's default).
        features: the FID feature network.
        real_features: also measure the input crops' features (off when the reference comes from
            saved statistics).
        lpips / lpips_weights: measure LPIPS-VGG, with these VGG16 weights (None: torch's hub cache).
        grid_rows: worst / best candidates kept per shard.
        codebook_size: the tokenizer's vocabulary (token histogram length).
    """

    def __init__(self, model_uri: str, option: str, crop: int, batch_size: int, precision: str,
                 threads: int | None, features: FeatureSpec, real_features: bool, lpips: bool,
                 lpips_weights: str | None, grid_rows: int, codebook_size: int):
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device()
        self.model = inference_layout(load_model_uri(model_uri, option=option, what="tokenizer weights").model,
                                      self.device)
        self.bf16 = use_bf16(precision, self.device)
        self.features = build_feature_net(features, self.device)
        self.dim = features.dim
        self.real_features = real_features
        self.lpips = load_lpips(lpips_weights, self.device) if lpips else None
        self.crop, self.batch_size, self.grid_rows, self.codebook_size = crop, batch_size, grid_rows, codebook_size

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) in [0, 1] -> (tokens (B, N) int64, reconstructions (B, 3, H, W) in [0, 1])."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            tokens = self.model.encode(x)
            if isinstance(self.model, MaskGITVQGAN):  # the teacher as a tokenizer: its codes, its decoder
                recon = self.model.decode(tokens)
            else:
                recon = self.model.decode_tokens(tokens, clamp=True)
        return tokens, recon.float()

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data stage: `DecodedShard` rows -> `EvaluatedShard` rows."""
        return S.EvaluatedShard.to_table([self.measure_shard(shard) for shard in S.DecodedShard.from_table(batch)])

    def measure_shard(self, shard: S.DecodedShard) -> S.EvaluatedShard:
        n = len(shard)
        crops = [apply_view(shard.base_image(i), CENTER, self.crop) for i in range(n)]
        stats = ShardStats.zeros(self.dim, self.codebook_size, real=self.real_features, device=self.device)
        candidates = Candidates(self.grid_rows)
        tokens, psnrs, ssims, lpipss = [], [], [], []
        for start in range(0, n, self.batch_size):
            real = np.stack(crops[start : start + self.batch_size])  # (B, H, W, 3) uint8
            codes, recon = self.reconstruct(to_model_input(real, self.device))
            fake = to_uint8(recon)  # the protocol's quantization, before any metric
            real_t, fake_t = (torch.from_numpy(a).to(self.device).permute(0, 3, 1, 2) for a in (real, fake))
            with torch.inference_mode():
                batch_psnr = psnr(real_t, fake_t, reduction="none", max_value=255.0).cpu().numpy()
                batch_ssim = ssim(real_t, fake_t).cpu().numpy()
                batch_lpips = (self.lpips(fake_t.float() / 255, real_t.float() / 255, reduction="none").double()
                               .cpu().numpy() if self.lpips is not None else np.full(len(real), np.nan))
                stats.fake.update(self.features(fake_t))
                if stats.real is not None:
                    stats.real.update(self.features(real_t))
            stats.token_counts += np.bincount(codes.cpu().numpy().reshape(-1), minlength=self.codebook_size)
            keys = shard.keys[start : start + self.batch_size]
            labels = shard.labels[start : start + self.batch_size]
            candidates.offer(keys, labels, badness(batch_psnr, batch_lpips)[1], real, fake)
            tokens.append(codes.cpu().numpy().astype(np.uint16))
            psnrs.append(batch_psnr)
            ssims.append(batch_ssim)
            lpipss.append(batch_lpips)
        width = tokens[0].shape[1] if tokens else 0
        return S.EvaluatedShard(
            shard.shard, shard.name, shard.keys, shard.labels, shard.sources, shard.members, shard.errors, shard.failed,
            tokens=np.concatenate(tokens) if tokens else np.zeros((0, width), np.uint16),
            psnr=_cat(psnrs), ssim=_cat(ssims), lpips=_cat(lpipss),
            side_files={f"_stats/{shard.name}.npz": stats.to_bytes(),
                        f"_grids/{shard.name}.parquet": candidates.to_bytes()},
        )


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0, np.float64)
