"""Class-conditional masked-token generators over TiTok's 1-D tokens (the paper's MaskGIT stage).

Two architectures, numerically the official ones (1d-tokenizer `modeling/maskgit.py`):
  BertGenerator  post-LN BERT encoder (the official ImageBert wraps a Hugging Face BertModel);
                 used with TiTok-L-32 and B-64
  UViTGenerator  pre-LN U-ViT with long skips (the official UViTBert); used with TiTok-S-128

Both read one sequence of ids: [class token, N image-token ids] and return logits over the K image
tokens for the N image positions. The vocabulary (V = K + C + 2 entries):
  0 .. K-1        image tokens (the tokenizer's codebook)
  K               [MASK]
  K+1 .. K+C      class c is id K+1+c
  K+1+C           "no class" (a dropped label, for classifier-free guidance)

Blocks are built from timm's Attention / Mlp; checkpoints.py maps the official parameter names
(BERT: Hugging Face names, separate q/k/v) onto ours. Sampling is in sampling.py, the training-time
masking and loss in masking.py.

Legend (einops): b batch, l sequence length (1 + N), n image positions (N), d width, k codebook (K).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from .presets import check_fields

# --------------------------------------------------------------------------------------------
# Configurations.
# Generous bounds (see presets.check_fields): the official generators are far inside them.
_GENERATOR_LIMITS = {"codebook_size": (1, 2**20), "num_latent_tokens": (1, 16384), "num_classes": (1, 10**6),
                     "width": (1, 16384), "depth": (1, 512), "num_heads": (1, 256), "mlp_dim": (1, 65536),
                     "label_dropout": (0.0, 1.0), "dropout": (0.0, 1.0), "attn_dropout": (0.0, 1.0)}


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes shared by both generator architectures (use BertGeneratorConfig / UViTGeneratorConfig).

    Args:
        codebook_size: K, the tokenizer's codebook size (image token ids 0..K-1; K is [MASK]).
        num_latent_tokens: N, tokens per image (the official `image_seq_len`).
        num_classes: C, class labels 0..C-1.
        width: hidden size.
        depth: the official `num_hidden_layers` (U-ViT: depth // 2 in-blocks, a mid-block and
            depth // 2 out-blocks, so 20 gives 21 blocks as in the official S-128 generator).
        num_heads: attention heads.
        mlp_dim: hidden size of the feed-forward layers (the official `intermediate_size`).
        label_dropout: probability of replacing the class by "no class" in training
            (the official `class_label_dropout`); `forward` uses it in train mode unless told otherwise.
    """

    codebook_size: int = 4096
    num_latent_tokens: int = 32
    num_classes: int = 1000
    width: int = 768
    depth: int = 24
    num_heads: int = 16
    mlp_dim: int = 3072
    label_dropout: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, _GENERATOR_LIMITS)
        if self.width % self.num_heads:
            raise ValueError(f"generator width {self.width} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"label_dropout {self.label_dropout} must be in [0, 1]")

    @property
    def mask_token_id(self) -> int:
        return self.codebook_size

    @property
    def null_class_id(self) -> int:
        """The "no class" token id (a dropped label)."""
        return self.codebook_size + 1 + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
        return cls(**d)

    @staticmethod
    def from_official(config: dict[str, Any]) -> "BertGeneratorConfig | UViTGeneratorConfig":
        """Build from the official nested config `{"model": {"vq_model": ..., "generator": ...}}`.

        `generator.model_type` "ViT" is the BERT-style model, "UViT" the U-ViT. The U-ViT ignores
        the config's dropout values, as the official one does.
        """
        vq, g = config["model"]["vq_model"], config["model"]["generator"]
        kinds = {"ViT": BertGeneratorConfig, "UViT": UViTGeneratorConfig}
        if g.get("model_type") not in kinds:
            raise ValueError(f"unknown generator model_type {g.get('model_type')!r}; expected one of {sorted(kinds)}")
        n = g["image_seq_len"]
        if vq.get("num_latent_tokens", n) != n:
            raise ValueError(f"generator image_seq_len {n} != tokenizer num_latent_tokens {vq['num_latent_tokens']}")
        sizes = dict(
            codebook_size=vq["codebook_size"], num_latent_tokens=n, num_classes=g["condition_num_classes"],
            width=g["hidden_size"], depth=g["num_hidden_layers"], num_heads=g["num_attention_heads"],
            mlp_dim=g["intermediate_size"], label_dropout=g.get("class_label_dropout", 0.1),
        )
        if g["model_type"] == "ViT":
            return BertGeneratorConfig(**sizes, dropout=g.get("dropout", 0.1), attn_dropout=g.get("attn_drop", 0.1))
        return UViTGeneratorConfig(**sizes)


@dataclass(frozen=True)
class BertGeneratorConfig(GeneratorConfig):
    """BERT-style generator (L-32, B-64).

    Args:
        dropout: dropout after the embeddings, the attention output and the feed-forward output
            (BERT's hidden_dropout_prob; 0.1 in every official config).
        attn_dropout: dropout on the attention probabilities (attention_probs_dropout_prob).
    """

    dropout: float = 0.1
    attn_dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} {getattr(self, name)} must be in [0, 1)")


@dataclass(frozen=True)
class UViTGeneratorConfig(GeneratorConfig):
    """U-ViT generator (S-128). No dropout anywhere: the official model builds none."""


AnyGeneratorConfig = Union[BertGeneratorConfig, UViTGeneratorConfig]

# The official generators (configs/infer/TiTok/titok_*.yaml; sizes checked against the manifests of
# generator_titok_{l32,b64,s128}.bin) and a tiny `debug` one matching the `debug` tokenizer
# (codebook 256, 32 tokens) so it can learn from that tokenizer's tokens on a CPU.
GENERATOR_PRESETS: dict[str, AnyGeneratorConfig] = {
    "L-32": BertGeneratorConfig(num_latent_tokens=32),
    "B-64": BertGeneratorConfig(num_latent_tokens=64),
    "S-128": UViTGeneratorConfig(num_latent_tokens=128, width=1024, depth=20, num_heads=16, mlp_dim=4096),
    "debug": BertGeneratorConfig(codebook_size=256, num_latent_tokens=32, width=64, depth=2, num_heads=4, mlp_dim=256),
}


def get_generator_preset(name: str) -> AnyGeneratorConfig:
    if name not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; choose one of {sorted(GENERATOR_PRESETS)}")
    return GENERATOR_PRESETS[name]


# --------------------------------------------------------------------------------------------
# Models.
class MaskedTokenGenerator(nn.Module):
    """What both architectures share: the token-id convention and class-label dropout."""

    config: GeneratorConfig

    def class_tokens(self, condition: Tensor, cond_drop_prob: float, generator: torch.Generator | None = None) -> Tensor:
        """condition (B,) class labels in [0, C) -> (B,) class token ids, each replaced by the
        "no class" id with probability `cond_drop_prob`.

        Draws B uniform numbers on every call, also for p = 0 (keeps all) and p = 1 (drops all),
        exactly as the official forward does; seeded sampling reproduces the official ids only so.
        """
        cfg = self.config
        drop = torch.rand(condition.shape, generator=generator, dtype=torch.float32, device=condition.device) < cond_drop_prob
        return torch.where(drop, cfg.null_class_id, condition + cfg.codebook_size + 1)

    def forward_sequence(self, sequence: Tensor) -> Tensor:
        """sequence (B, 1 + N) ids [class token, image ids] -> logits (B, N, K)."""
        raise NotImplementedError

    def forward(
        self,
        input_ids: Tensor,
        condition: Tensor,
        cond_drop_prob: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """input_ids (B, N) image-token ids (K = [MASK]); condition (B,) labels -> logits (B, N, K).

        Args:
            cond_drop_prob: probability of dropping each label (classifier-free guidance training).
                None: the config's `label_dropout` in train mode, 0 in eval mode.
            generator: the random-number generator of the label-dropout draw (default: torch's global one).
        """
        if cond_drop_prob is None:
            cond_drop_prob = self.config.label_dropout if self.training else 0.0
        cls = self.class_tokens(condition.reshape(-1), cond_drop_prob, generator)
        return self.forward_sequence(torch.cat([cls[:, None], input_ids.reshape(input_ids.shape[0], -1)], dim=1))


class PostNormBlock(nn.Module):
    """A BERT layer: x = LN(x + attn(x)); x = LN(x + mlp(x)) with exact GELU and LayerNorm eps 1e-12.

    Hidden dropout sits after the attention projection and after the second feed-forward layer,
    attention dropout on the attention probabilities, as in BERT.
    """

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        from timm.layers import Attention, Mlp  # here: timm imports torchvision and torch._dynamo (~2 s)
        self.attn = Attention(width, heads, qkv_bias=True, attn_drop=attn_dropout, proj_drop=dropout)
        self.norm1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = Mlp(width, mlp_dim, act_layer=nn.GELU, drop=(0.0, dropout))
        self.norm2 = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class BertGenerator(MaskedTokenGenerator):
    """The BERT-style generator (official ImageBert): embeddings (word + token type 0 + position,
    LayerNorm, dropout), post-LN layers, a linear head without a final norm."""

    def __init__(self, cfg: BertGeneratorConfig):
        super().__init__()
        self.config = cfg
        d = cfg.width
        self.word_embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Embedding(cfg.num_latent_tokens + 1, d)
        # BERT's token-type table has 2 rows; every token has type 0, but the checkpoints carry both.
        self.type_embed = nn.Embedding(2, d)
        self.embed_norm = nn.LayerNorm(d, eps=1e-12)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            PostNormBlock(d, cfg.num_heads, cfg.mlp_dim, cfg.dropout, cfg.attn_dropout) for _ in range(cfg.depth)
        )
        self.lm_head = nn.Linear(d, cfg.codebook_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Hugging Face BERT's initialisation (initializer_range 0.02), which the official model uses.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_sequence(self, sequence: Tensor) -> Tensor:
        l = sequence.shape[1]
        # Summation order as in BERT: (word + token type) + position.
        x = self.word_embed(sequence) + self.type_embed.weight[0] + self.pos_embed.weight[:l]  # (b, l, d)
        x = self.embed_drop(self.embed_norm(x))
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(x[:, 1:])  # (b, n, k): the class position has no output


class UViTBlock(nn.Module):
    """Pre-LN transformer block (qkv without bias); an out-block first fuses its long skip:
    x = skip_linear(cat[x, skip])."""

    def __init__(self, width: int, heads: int, mlp_dim: int, skip: bool = False):
        super().__init__()
        from timm.layers import Attention, Mlp  # here: timm imports torchvision and torch._dynamo (~2 s)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, mlp_dim, act_layer=nn.GELU)
        self.skip_linear = nn.Linear(2 * width, width) if skip else None  # registered last: official key order

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViTGenerator(MaskedTokenGenerator):
    """The U-ViT generator (official UViTBert): in-blocks whose outputs are kept, a mid-block, and
    out-blocks that take them back last-in first-out; final LayerNorm and a linear head."""

    def __init__(self, cfg: UViTGeneratorConfig):
        super().__init__()
        self.config = cfg
        d, half = cfg.width, cfg.depth // 2
        self.embeddings = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_latent_tokens + 1, d))
        self.in_blocks = nn.ModuleList(UViTBlock(d, cfg.num_heads, cfg.mlp_dim) for _ in range(half))
        self.mid_block = UViTBlock(d, cfg.num_heads, cfg.mlp_dim)
        self.out_blocks = nn.ModuleList(UViTBlock(d, cfg.num_heads, cfg.mlp_dim, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, cfg.codebook_size)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official U-ViT initialisation: truncated normal(0.02), zero biases, unit LayerNorms.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_sequence(self, sequence: Tensor) -> Tensor:
        x = self.embeddings(sequence) + self.pos_embed[:, : sequence.shape[1]]  # (b, l, d)
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        return self.lm_head(self.norm(x)[:, 1:])  # (b, n, k)


AnyGenerator = Union[BertGenerator, UViTGenerator]

GENERATOR_CLASSES: dict[type, type] = {BertGeneratorConfig: BertGenerator, UViTGeneratorConfig: UViTGenerator}


def build_generator(cfg: AnyGeneratorConfig) -> AnyGenerator:
    """The generator a config describes (its class follows the config's type)."""
    if type(cfg) not in GENERATOR_CLASSES:
        raise ValueError(f"{type(cfg).__name__} is not a generator config; use BertGeneratorConfig or UViTGeneratorConfig")
    return GENERATOR_CLASSES[type(cfg)](cfg)
