"""TiTok: a ViT that reads an image into N latent tokens, a quantizer, and a ViT that reads them back.

Two compositions of the same parts (no flag changes what a model contains):
  TiTok          stage-1 form: images -> tokens -> proxy-code logits (B, 1024, g, g)
  TiTokReleased  released / stage-2 form: TiTok + ProxyPixelDecoder, tokens -> pixels

Numerically the official models (1d-tokenizer `modeling/titok.py`, `modules/blocks.py`) in their
default ("legacy") layout, which every released checkpoint uses. The transformer blocks are timm's
(fused scaled-dot-product attention); checkpoints.py maps the official parameter names onto them.

Legend (einops): b batch, n grid positions (g*g), l latent tokens (N), d width, c token_size,
k proxy codebook (1024), gh gw grid height / width.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from .presets import TiTokConfig
from .quantizer import QuantizerOutput, VectorQuantizer
from .vqgan import MaskGITVQGAN, VQGANDecoder, VQGANQuantizer


def _blocks(width: int, depth: int, heads: int) -> nn.ModuleList:
    # Pre-norm block with qkv bias, exact GELU and torch LayerNorm (eps 1e-5), as in the official
    # ResidualAttentionBlock; timm's default norm would use eps 1e-6. timm is imported here, not at the
    # top: it imports torchvision and torch._dynamo (~2 s per process), which a worker running only
    # the teacher never needs.
    from timm.models.vision_transformer import Block
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth)
    )


def _init_vit(module: nn.Module, std: float = 0.02) -> None:
    """The official initialisation: truncated normal(std, official 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TiTokEncoder(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> continuous latents z (B, c, 1, l)."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        w, g, n = cfg.enc_width, cfg.enc_grid, cfg.num_latent_tokens
        scale = w**-0.5
        self.width, self.num_latent_tokens, self.token_size = w, n, cfg.token_size
        self.patch_embed = nn.Conv2d(3, w, cfg.enc_patch_size, stride=cfg.enc_patch_size)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(g * g + 1, w))
        self.latent_tokens = nn.Parameter(scale * torch.randn(n, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(n, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = _blocks(w, cfg.enc_layers, cfg.enc_heads)
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, cfg.token_size, 1)
        self.apply(functools.partial(_init_vit, std=cfg.init_std))

    def forward(self, images: Tensor) -> Tensor:
        b = images.shape[0]
        x = rearrange(self.patch_embed(images), "b d gh gw -> b (gh gw) d")
        cls = repeat(self.class_embedding, "1 d -> b 1 d", b=b)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        latents = repeat(self.latent_tokens + self.latent_token_positional_embedding, "l d -> b l d", b=b)
        x = self.ln_pre(torch.cat([x, latents], dim=1))  # (b, 1 + n + l, d)
        for blk in self.blocks:
            x = blk(x)
        latents = self.ln_post(x[:, -self.num_latent_tokens:])  # (b, l, d)
        # Legacy layout: the official model reinterprets the (b, l, d) memory as (b, d, l, 1)
        # (a reshape, not a transpose) before the 1x1 conv. The released weights depend on it.
        z = self.conv_out(latents.reshape(b, self.width, self.num_latent_tokens, 1))
        return z.reshape(b, self.token_size, 1, self.num_latent_tokens)


class TiTokDecoder(nn.Module):
    """quantized latents z_q (B, c, 1, l) -> proxy-code logits (B, k, g, g)."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        w, g, n = cfg.dec_width, cfg.dec_grid, cfg.num_latent_tokens
        scale = w**-0.5
        self.grid = g
        self.decoder_embed = nn.Linear(cfg.token_size, w)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(g * g + 1, w))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(n, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = _blocks(w, cfg.dec_layers, cfg.dec_heads)
        self.ln_post = nn.LayerNorm(w)
        # Per-position MLP to the proxy codebook (1x1 convs on the grid, as in the official head).
        self.proxy_head = nn.Sequential(
            nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, cfg.proxy_codebook_size, 1)
        )
        self.apply(functools.partial(_init_vit, std=cfg.init_std))

    def forward(self, z_q: Tensor) -> Tensor:
        b, _, one, l = z_q.shape
        assert one == 1, f"z_q must be (B, c, 1, N), got {tuple(z_q.shape)}"
        latents = self.decoder_embed(rearrange(z_q, "b c 1 l -> b l c"))
        latents = latents + self.latent_token_positional_embedding[:l]
        queries = repeat(self.mask_token, "1 1 d -> b n d", b=b, n=self.grid**2)
        cls = repeat(self.class_embedding, "1 d -> b 1 d", b=b)
        queries = torch.cat([cls, queries], dim=1) + self.positional_embedding
        x = self.ln_pre(torch.cat([queries, latents], dim=1))  # (b, 1 + n + l, d)
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_post(x[:, 1 : 1 + self.grid**2])
        x = rearrange(x, "b (gh gw) d -> b d gh gw", gh=self.grid)
        return self.proxy_head(x)


class TiTok(nn.Module):
    """Stage-1 form: images -> N tokens -> logits over the teacher's proxy codes."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        self.config = cfg
        self.encoder = TiTokEncoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.commitment_cost, cfg.use_l2_norm)
        self.decoder = TiTokDecoder(cfg)

    def quantize_images(self, images: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """images (B, 3, H, W) in [0, 1] -> (z_q (B, c, 1, N), QuantizerOutput)."""
        return self.quantize(self.encoder(images))

    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> tokens (B, N) int64."""
        return self.quantize_images(images)[1].codes

    def tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """tokens (B, N) or (B, 1, N) -> z_q (B, c, 1, N)."""
        tokens = tokens.reshape(tokens.shape[0], -1)
        return rearrange(self.quantize.get_codebook_entry(tokens), "b l c -> b c 1 l")

    def decode(self, z_q: Tensor) -> Tensor:
        """z_q (B, c, 1, N) -> proxy-code logits (B, 1024, g, g)."""
        return self.decoder(z_q)

    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """tokens (B, N) -> proxy-code logits (B, 1024, g, g)."""
        return self.decode(self.tokens_to_latents(tokens))

    def forward(self, images: Tensor) -> tuple[Tensor, QuantizerOutput]:
        z_q, out = self.quantize_images(images)
        return self.decode(z_q), out


class ProxyPixelDecoder(nn.Module):
    """proxy-code logits (B, K, g, g) -> pixels: softmax-weighted MaskGIT-VQGAN codebook vectors
    through the MaskGIT-VQGAN decoder. Initialised from the teacher for stage 2."""

    def __init__(self, teacher_cfg):
        super().__init__()
        self.quantize = VQGANQuantizer(teacher_cfg.codebook_size, teacher_cfg.z_channels, teacher_cfg.commitment_cost)
        self.decoder = VQGANDecoder(teacher_cfg)

    @classmethod
    def from_teacher(cls, teacher: MaskGITVQGAN) -> "ProxyPixelDecoder":
        head = cls(teacher.config)
        head.quantize.load_state_dict(teacher.quantize.state_dict())
        head.decoder.load_state_dict(teacher.decoder.state_dict())
        return head

    def forward(self, logits: Tensor) -> Tensor:
        probs = logits.softmax(dim=1)
        z = torch.einsum("bkhw,kc->bchw", probs, self.quantize.embedding.weight)
        return self.decoder(z)


class TiTokReleased(nn.Module):
    """Released / stage-2 form: images -> N tokens -> pixels (B, 3, H, W), not clamped."""

    def __init__(self, cfg: TiTokConfig, titok: TiTok | None = None, pixel: ProxyPixelDecoder | None = None):
        super().__init__()
        self.config = cfg
        self.titok = titok if titok is not None else TiTok(cfg)
        self.pixel = pixel if pixel is not None else ProxyPixelDecoder(cfg.pixel_vqgan)

    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> tokens (B, N) int64."""
        return self.titok.encode(images)

    def decode(self, z_q: Tensor) -> Tensor:
        """z_q (B, c, 1, N) -> images (B, 3, H, W), not clamped."""
        return self.pixel(self.titok.decode(z_q))

    def decode_tokens(self, tokens: Tensor, clamp: bool = False) -> Tensor:
        """tokens (B, N) -> images (B, 3, H, W); `clamp` limits them to [0, 1] for viewing."""
        images = self.decode(self.titok.tokens_to_latents(tokens))
        return images.clamp(0.0, 1.0) if clamp else images

    def forward(self, images: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Reconstruct. The encoder and quantizer are frozen in this form (stage 2 trains only the
        decoders), so they run without gradient and their losses are reported as zeros."""
        with torch.no_grad():
            z_q, out = self.titok.quantize_images(images)
        zero = out.quantizer_loss.new_zeros(())
        return self.decode(z_q), QuantizerOutput(out.codes, zero, zero, zero)
