"""Model stage: a shard's base images -> discrete codes for every view (one model per actor).

The same callable serves the teacher (proxy codes, jobs/precompute_proxy.py) and a TiTok
tokenizer (tokens, jobs/tokenize_dataset.py): both models have `encode(images in [0, 1]) -> (B, L)`.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pyarrow as pa
import torch

from titok_core import MaskGITVQGAN
from titok_core.metrics import psnr

from .. import schema as S
from ..preprocess import apply_view, to_model_input, view_offset, view_specs
from ..runtime import load_lpips, load_model_uri, pick_device

INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
FREE_MODEL_ENV = "TITOK_BENCH_FREE_MODEL"  # benchmarks/cpu_side.py: replace the model by a free one


class FreeEncoder(torch.nn.Module):
    """A model that costs nothing: zeros for every crop. benchmarks/cpu_side.py measures the job's CPU
    side with it, as on a GPU node, where the model is far faster than decoding."""

    def __init__(self, codes_per_view: int):
        super().__init__()
        self.codes_per_view = codes_per_view

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], self.codes_per_view, dtype=torch.long)


def use_bf16(precision: str, device: torch.device) -> bool:
    """auto: bf16 on GPU, fp32 on CPU (bf16 there is faster only with AMX; ask for it explicitly)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def inference_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode, no gradients, on `device`; channels-last for the conv teacher (1.9x on CPU, see benchmarks)."""
    model = model.eval().requires_grad_(False).to(device)
    if isinstance(model, MaskGITVQGAN):
        model = model.to(memory_format=torch.channels_last)
    return model


class EncodeViews:
    """Ray Data callable class: `DecodedShard` rows -> `EncodedShard` rows (codes for every view).

    Args:
        model_uri: checkpoint (local path, URL or s3://; fetched once per node into the cache).
        option: the CLI option naming the model, for error messages.
        views: view-set name (pipelines.preprocess.view_specs).
        crop: crop size fed to the model.
        batch_size: images (views) per forward pass.
        codes_per_view: codes the model emits per crop (checked on every batch).
        precision: auto | fp32 | bf16.
        threads: torch intra-op threads (None: torch's default).
        bf16_check_batches: with bf16, also run the first this many batches of this actor (over the
            whole job, not per shard: the check then costs a fixed few batches, not a share of every
            shard) in fp32 and count how many codes agree.
        verify_fraction: decode the tokens of this fraction of images (first view) back to pixels and
            measure PSNR (and LPIPS where its weights are available) against the crop (tokenizers with
            a pixel decoder only).
    """

    def __init__(self, model_uri: str, option: str, views: str, crop: int, batch_size: int, codes_per_view: int,
                 precision: str = "auto", threads: int | None = None, bf16_check_batches: int = 2,
                 verify_fraction: float = 0.0):
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device()
        self.model = inference_layout(load_model_uri(model_uri, option=option, what="model weights").model,
                                      self.device)
        self.bf16 = use_bf16(precision, self.device)
        self.views = view_specs(views)
        self.crop, self.batch_size, self.bf16_checks_left = crop, batch_size, bf16_check_batches
        if os.environ.get(FREE_MODEL_ENV):  # benchmarks only: the GPU regime, where the model costs ~nothing
            self.model = FreeEncoder(codes_per_view)
        self.codes_per_view = codes_per_view
        self.verify_fraction = verify_fraction
        self.lpips = load_lpips(device=self.device, required=False) if verify_fraction > 0 else None

    def encode(self, batch: np.ndarray, bf16: bool) -> np.ndarray:
        """batch: (B, H, W, 3) uint8 -> codes (B, L) uint16."""
        x = to_model_input(batch, self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = self.model.encode(x)
        return codes.cpu().numpy().astype(np.uint16)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data stage: `DecodedShard` rows -> `EncodedShard` rows."""
        return S.EncodedShard.to_table([self.encode_shard(shard) for shard in S.DecodedShard.from_table(batch)])

    def encode_shard(self, shard: S.DecodedShard) -> S.EncodedShard:
        n, nv = len(shard), len(self.views)
        bases = [shard.base_image(i) for i in range(n)]
        crops = [apply_view(image, v, self.crop) for image in bases for v in self.views]
        agree = compared = 0
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            batch = np.stack(crops[start : start + self.batch_size])
            codes = self.encode(batch, self.bf16)
            if self.bf16 and self.bf16_checks_left > 0:
                self.bf16_checks_left -= 1
                ref = self.encode(batch, False)
                agree += int((codes == ref).sum())
                compared += ref.size
            if codes.shape[1] != self.codes_per_view:
                raise ValueError(f"model emits {codes.shape[1]} codes per crop, expected {self.codes_per_view}")
            chunks.append(codes)
        codes = np.concatenate(chunks) if chunks else np.zeros((0, self.codes_per_view), np.uint16)
        codes = codes.reshape(n, nv, self.codes_per_view)
        offsets = np.array([[view_offset(*image.shape[:2], v, self.crop) for v in self.views] for image in bases],
                           dtype=np.int32).reshape(n, nv)
        stats = {"bf16_agree": agree, "bf16_compared": compared}
        if self.verify_fraction > 0 and n:
            stats.update(self.verify(shard.name, codes[:, 0], crops[::nv]))
        return S.EncodedShard.from_decoded(shard, codes, offsets, [v.flip for v in self.views], stats)

    def verify(self, name: str, tokens: np.ndarray, crops: list[np.ndarray]) -> dict[str, float]:
        """PSNR / LPIPS sums over a seeded random subset of the shard's images (first view)."""
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        chosen = np.flatnonzero(rng.random(len(crops)) < self.verify_fraction)
        stats = {"verify_count": 0, "verify_psnr_sum": 0.0, "verify_lpips_count": 0, "verify_lpips_sum": 0.0}
        for start in range(0, len(chosen), self.batch_size):
            idx = chosen[start : start + self.batch_size]
            target = to_model_input(np.stack([crops[i] for i in idx]), self.device)
            with torch.inference_mode():
                recon = self.model.decode_tokens(torch.from_numpy(tokens[idx].astype(np.int64)).to(self.device),
                                                 clamp=True).float()
                stats["verify_psnr_sum"] += float(psnr(target, recon, reduction="sum"))
                stats["verify_count"] += len(idx)
                if self.lpips is not None:
                    stats["verify_lpips_sum"] += float(self.lpips(recon, target, reduction="sum"))
                    stats["verify_lpips_count"] += len(idx)
        return stats
