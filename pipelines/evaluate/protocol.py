"""The paper's reconstruction protocol, as every result records it, and the paper's numbers.

The protocol is the official TiTok evaluation (1d-tokenizer `evaluator/`, the ImageNet-1k validation
set at 256x256): centre crops as the official eval transform makes them, reconstructions clamped and
quantized to uint8 before any metric, rFID against the same centre crops (not against the ADM
generation reference batch, which inflates rFID about 2x), Inception features in float64.
"""

from __future__ import annotations

from typing import Any

from titok_core import PRESETS, VQGAN_PRESETS

RESOLUTION = 256
# The paper's image count: rFID is biased upward on fewer images, so only this many are comparable.
PAPER_IMAGES = 50_000

PROTOCOL: dict[str, Any] = {
    "name": "titok-rfid-v1",
    "dataset": "ImageNet-1k validation (50,000 images) for numbers comparable with the paper",
    "input": "decode to RGB; shorter side to 256 (torchvision bicubic, antialias); centre crop 256x256 "
             "(pipelines.preprocess, the official eval transform)",
    "reconstruction": "tokenizer encode -> decode, clamped to [0, 1], x255, rounded to uint8 before every metric",
    "rfid_reference": "the same centre crops of the same images",
    "fid_statistics": "per shard: n, sum, sum of outer products of the features (float64); merged by addition; "
                      "covariance with n - 1; torch-fidelity's Frechet distance",
    "psnr": "per image on the uint8 images (peak 255), then the mean",
    "ssim": "per image: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, per RGB channel, 5-pixel border "
            "excluded (= skimage gaussian_weights=True, use_sample_covariance=False; float32, within 1e-4); then the mean",
    "lpips": "per image: LPIPS-VGG (lpips package heads, ImageNet VGG16), 256x256, inputs in [0, 1]; then the mean",
    "codebook": "usage = fraction of codebook entries used at least once; perplexity = exp(entropy) of token use",
}

# rFID, ImageNet-1k val 256x256 (TiTok paper, Table 1; the teacher: its MaskGIT-VQGAN row).
PAPER_RFID = {"TiTok-L-32": 2.21, "TiTok-B-64": 1.70, "TiTok-S-128": 1.71, "MaskGIT-VQGAN (teacher)": 2.28}
_SIZE_KEYS = ("image_size", "enc_patch_size", "enc_width", "enc_layers", "dec_width", "dec_layers",
              "num_latent_tokens", "codebook_size", "token_size")


def paper_model(kind: str, config: dict[str, Any]) -> str | None:
    """The paper's model of the same size as a tokenizer (its kind and config), or None."""
    if kind == "MaskGITVQGAN":
        return "MaskGIT-VQGAN (teacher)" if config == VQGAN_PRESETS["f16-256"].to_dict() else None
    for preset in ("L-32", "B-64", "S-128"):
        ref = PRESETS[preset].to_dict()
        if all(config.get(k) == ref[k] for k in _SIZE_KEYS):
            return f"TiTok-{preset}"
    return None
