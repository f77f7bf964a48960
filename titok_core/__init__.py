"""Torch-only TiTok library: MaskGIT-VQGAN teacher, TiTok tokenizer, quantizers, checkpoints."""

from .checkpoints import OFFICIAL_URLS, load_model, load_pretrained, save_pretrained
from .presets import PRESETS, VQGAN_PRESETS, TiTokConfig, VQGANConfig, get_preset
from .quantizer import QuantizerOutput, VectorQuantizer
from .titok import ProxyPixelDecoder, TiTok, TiTokReleased
from .vqgan import MaskGITVQGAN

__all__ = [
    "OFFICIAL_URLS", "PRESETS", "VQGAN_PRESETS", "MaskGITVQGAN", "ProxyPixelDecoder", "QuantizerOutput",
    "TiTok", "TiTokConfig", "TiTokReleased", "VQGANConfig", "VectorQuantizer", "get_preset",
    "load_model", "load_pretrained", "save_pretrained",
]
