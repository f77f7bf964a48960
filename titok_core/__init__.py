"""Torch-only TiTok library: the models, their losses and metrics, and their checkpoints.

    presets / vqgan / titok / quantizer   MaskGIT-VQGAN teacher, TiTok tokenizer (stage-1 and released
                                          forms), quantizers, the named sizes
    generator / sampling / masking        class-conditional masked-token generators, their sampler,
                                          training masking and loss
    losses / metrics / discriminator / ema  training losses, image and token metrics, the stage-2 GAN
    checkpoints / conformance             official .bin files, the official Hub layout and our safetensors
                                          format; the numerical check against the official implementation

May import: torch, torchvision, timm, einops, lpips, safetensors, numpy and the standard library.
Never ray, pyarrow, fsspec, `pipelines` or `jobs`, and never downloads: weights come in by local
path (fetching URLs and Hugging Face Hub names is `pipelines.storage`'s job). Checked by import-linter
(tests/test_architecture.py).
"""

from .checkpoints import (
    GENERATOR_HUB_MODELS,
    GENERATOR_URLS,
    HUB_MODELS,
    OFFICIAL_URLS,
    load_model,
    load_official_dir,
    load_pretrained,
    save_pretrained,
)
from .generator import (
    GENERATOR_PRESETS,
    BertGenerator,
    BertGeneratorConfig,
    GeneratorConfig,
    UViTGenerator,
    UViTGeneratorConfig,
    build_generator,
    get_generator_preset,
)
from .masking import mask_tokens, masked_token_loss
from .presets import PRESETS, VQGAN_PRESETS, TiTokConfig, VQGANConfig, get_preset
from .quantizer import QuantizerOutput, VectorQuantizer
from .sampling import SAMPLING_PRESETS, SamplingConfig, generate, get_sampling_preset
from .titok import ProxyPixelDecoder, TiTok, TiTokReleased
from .vqgan import MaskGITVQGAN

__all__ = [
    "GENERATOR_HUB_MODELS", "GENERATOR_PRESETS", "GENERATOR_URLS", "HUB_MODELS", "OFFICIAL_URLS", "PRESETS",
    "SAMPLING_PRESETS", "VQGAN_PRESETS",
    "BertGenerator", "BertGeneratorConfig", "GeneratorConfig", "MaskGITVQGAN", "ProxyPixelDecoder",
    "QuantizerOutput", "SamplingConfig", "TiTok", "TiTokConfig", "TiTokReleased", "UViTGenerator",
    "UViTGeneratorConfig", "VQGANConfig", "VectorQuantizer", "build_generator", "generate",
    "get_generator_preset", "get_preset", "get_sampling_preset", "load_model", "load_official_dir",
    "load_pretrained", "mask_tokens", "masked_token_loss", "save_pretrained",
]
