"""Model stage: a shard row's base images -> discrete codes for every view (one model per actor).

The same callable serves the teacher (proxy codes, jobs/precompute_proxy.py) and a TiTok
tokenizer (tokens, jobs/tokenize_dataset.py): both models have `encode(images in [0, 1]) -> (B, L)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from typing import Any

import numpy as np
import torch

from titok_core import MaskGITVQGAN, load_model

from .storage import fetch_to_cache
from .views import apply_view, crop_start, view_specs

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16")


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(precision: str, device: torch.device) -> bool:
    """auto: bf16 on GPU, fp32 on CPU (bf16 there is faster only with AMX; ask for it explicitly)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Inference layout: eval, on device, channels-last for the conv teacher (1.9x on CPU, see benchmarks)."""
    model = model.eval().requires_grad_(False).to(device)
    if isinstance(model, MaskGITVQGAN):
        model = model.to(memory_format=torch.channels_last)
    return model


def model_identity(path: str, model: torch.nn.Module) -> dict[str, Any]:
    """What the dataset metadata records about the model: kind, config and a hash of its weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    cfg = model.config.to_dict()
    return {"kind": type(model).__name__, "config": cfg, "weights_sha256": h.hexdigest(), "source": path}


class EncodeViews:
    """Ray Data callable class: adds `codes` (n, views, L) uint16 to a shard row, drops raw pixels.

    Args:
        model_uri: checkpoint (local path, URL or s3://; fetched once per node into the cache).
        option: the CLI option naming the model, for error messages.
        views: view-set name (pipelines.views).
        crop: crop size fed to the model.
        batch_size: images (views) per forward pass.
        codes_per_view: codes the model emits per crop (checked on every batch).
        precision: auto | fp32 | bf16.
        threads: torch intra-op threads (None: torch's default).
        bf16_check_batches: with bf16, also run this many batches per shard in fp32 and count agreement.
        verify_fraction: decode the tokens of this fraction of images (first view) back to pixels and
            measure PSNR (and LPIPS where its weights are available) against the crop (tokenizers with
            a pixel decoder only).
    """

    def __init__(self, model_uri: str, option: str, views: str, crop: int, batch_size: int, codes_per_view: int,
                 precision: str = "auto", threads: int | None = None, bf16_check_batches: int = 1,
                 verify_fraction: float = 0.0):
        if threads:
            torch.set_num_threads(threads)
        path = fetch_to_cache(model_uri, what="model weights", option=option)
        self.device = pick_device()
        self.model = prepare(load_model(path), self.device)
        self.bf16 = use_bf16(precision, self.device)
        self.views = view_specs(views)
        self.crop, self.batch_size, self.bf16_check_batches = crop, batch_size, bf16_check_batches
        self.codes_per_view = codes_per_view
        self.verify_fraction = verify_fraction
        self.lpips = load_lpips(self.device) if verify_fraction > 0 else None

    def encode(self, batch: np.ndarray, bf16: bool) -> np.ndarray:
        """batch: (B, H, W, 3) uint8 -> codes (B, L) uint16."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = self.model.encode(x)
        return codes.cpu().numpy().astype(np.uint16)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        crops = []
        for raw, h, w in zip(row["pixels"], row["heights"], row["widths"]):
            image = np.frombuffer(raw, dtype=np.uint8).reshape(int(h), int(w), 3)
            crops.extend(apply_view(image, v, self.crop) for v in self.views)
        n, nv = len(row["pixels"]), len(self.views)
        agree = compared = 0
        chunks = []
        for b, start in enumerate(range(0, len(crops), self.batch_size)):
            batch = np.stack(crops[start : start + self.batch_size])
            codes = self.encode(batch, self.bf16)
            if self.bf16 and b < self.bf16_check_batches:
                ref = self.encode(batch, False)
                agree += int((codes == ref).sum())
                compared += ref.size
            if codes.shape[1] != self.codes_per_view:
                raise ValueError(f"model emits {codes.shape[1]} codes per crop, expected {self.codes_per_view}")
            chunks.append(codes)
        codes = np.concatenate(chunks) if chunks else np.zeros((0, self.codes_per_view), np.uint16)
        offsets = [
            [crop_start(max(int(h), int(w)), self.crop, v.offset) for v in self.views]
            for h, w in zip(row["heights"], row["widths"])
        ]
        out = {k: v for k, v in row.items() if k != "pixels"}
        out["codes"] = codes.reshape(n, nv, self.codes_per_view).tobytes()
        out["codes_shape"] = [n, nv, self.codes_per_view]
        out["view_offsets"] = json.dumps(offsets)
        out["view_flips"] = [v.flip for v in self.views]
        stats = {"bf16_agree": agree, "bf16_compared": compared}
        if self.verify_fraction > 0 and n:
            stats.update(self.verify(row["name"], codes.reshape(n, nv, self.codes_per_view)[:, 0], crops[::nv]))
        out["stats"] = json.dumps(stats)
        return out

    def verify(self, name: str, tokens: np.ndarray, crops: list[np.ndarray]) -> dict[str, float]:
        """PSNR / LPIPS sums over a seeded random subset of the shard's images (first view)."""
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        chosen = np.flatnonzero(rng.random(len(crops)) < self.verify_fraction)
        stats = {"verify_count": 0, "verify_psnr_sum": 0.0, "verify_lpips_count": 0, "verify_lpips_sum": 0.0}
        for start in range(0, len(chosen), self.batch_size):
            idx = chosen[start : start + self.batch_size]
            target = torch.from_numpy(np.stack([crops[i] for i in idx])).to(self.device).permute(0, 3, 1, 2).float() / 255
            with torch.inference_mode():
                recon = self.model.decode_tokens(torch.from_numpy(tokens[idx].astype(np.int64)).to(self.device),
                                                 clamp=True).float()
                mse = ((recon - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
                stats["verify_psnr_sum"] += float((10 * torch.log10(1.0 / mse)).sum())
                stats["verify_count"] += len(idx)
                if self.lpips is not None:  # LPIPS expects [-1, 1]
                    stats["verify_lpips_sum"] += float(self.lpips(recon * 2 - 1, target * 2 - 1).sum())
                    stats["verify_lpips_count"] += len(idx)
        return stats


def load_lpips(device: torch.device):
    """LPIPS-VGG with its pretrained weights if they can be had (cached or downloadable), else None."""
    try:
        import lpips
        return lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False).to(device)
    except Exception as e:  # offline without cached backbone weights: PSNR only
        log.warning("LPIPS unavailable (%s); verification reports PSNR only", str(e).splitlines()[0][:120])
        return None

