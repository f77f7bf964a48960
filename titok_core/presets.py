"""Model configurations and the named presets (the paper's sizes plus a tiny `debug` size).

A configuration is a frozen dataclass that carries every size the model needs, so a checkpoint
saved with its config can be rebuilt without knowing which preset it came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def check_fields(cfg: Any, limits: dict[str, tuple[float, float]]) -> None:
    """Types and sane bounds of a config's fields, checked before any model is built: a config.json
    with a string for a width, or 10**7 layers, is one ValueError line, not a traceback or a hang.

    Args:
        cfg: a config dataclass instance (field annotations "int", "float", "bool" are enforced).
        limits: field name -> inclusive (low, high); for tuples, the bound of every element.
    """
    name = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = str(f.type)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if kind.startswith(("int", "tuple[int")) and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{name}.{f.name} must be an integer, got {v!r}")
            if kind == "float" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{name}.{f.name} must be a number, got {v!r}")
            if kind == "bool" and not isinstance(v, bool):
                raise ValueError(f"{name}.{f.name} must be true or false, got {v!r}")
            if f.name in limits and not limits[f.name][0] <= v <= limits[f.name][1]:
                low, high = limits[f.name]
                raise ValueError(f"{name}.{f.name} = {v} is outside the supported range [{low}, {high}]")


# Generous bounds: every official model is far inside them; a value outside is a damaged config.
_VQGAN_LIMITS = {"channel_mult": (1, 64), "hidden_channels": (1, 4096), "num_res_blocks": (1, 32),
                 "z_channels": (1, 4096), "codebook_size": (1, 2**20), "resolution": (1, 8192), "num_channels": (1, 16),
                 "num_groups": (1, 1024), "dropout": (0.0, 1.0), "commitment_cost": (0.0, 100.0)}
_TITOK_LIMITS = {"image_size": (1, 8192), "enc_patch_size": (1, 1024), "dec_patch_size": (1, 1024),
                 "enc_width": (1, 16384), "enc_layers": (1, 256), "enc_heads": (1, 256),
                 "dec_width": (1, 16384), "dec_layers": (1, 256), "dec_heads": (1, 256),
                 "num_latent_tokens": (1, 16384), "codebook_size": (1, 2**20), "token_size": (1, 4096),
                 "commitment_cost": (0.0, 100.0), "proxy_codebook_size": (1, 2**20), "init_std": (1e-6, 10.0)}


# The official ViT sizes (TiTokEncoder/TiTokDecoder's size table): width, layers, heads.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


@dataclass(frozen=True)
class VQGANConfig:
    """MaskGIT-VQGAN (the proxy-code teacher): conv encoder, codebook, conv decoder.

    Args:
        channel_mult: channel multiplier per resolution level; len = number of levels,
            the image is down-sampled by 2 ** (levels - 1).
        hidden_channels: channels of level 0.
        num_res_blocks: residual blocks per level (and in the middle).
        z_channels: channels of the latent grid (= codebook vector size).
        codebook_size: number of codebook entries.
        resolution: nominal input size; the model itself is fully convolutional.
        num_channels: image channels.
        num_groups: GroupNorm groups (32 in the official model, not meant to be tuned).
        dropout: dropout in residual blocks (0 in the official model).
        commitment_cost: weight of the commitment term when the quantizer loss is asked for.
    """

    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    hidden_channels: int = 128
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    resolution: int = 256
    num_channels: int = 3
    num_groups: int = 32
    dropout: float = 0.0
    commitment_cost: float = 0.25

    def __post_init__(self) -> None:
        if not isinstance(self.channel_mult, (list, tuple)) or not 1 <= len(self.channel_mult) <= 10:
            raise ValueError(f"VQGANConfig.channel_mult must be a list of 1 to 10 integers, got {self.channel_mult!r}")
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        check_fields(self, _VQGAN_LIMITS)
        for c in [self.hidden_channels * m for m in self.channel_mult]:
            if c % self.num_groups:
                raise ValueError(
                    f"VQGAN channels {c} are not divisible by num_groups={self.num_groups}; "
                    "choose hidden_channels * channel_mult as multiples of num_groups"
                )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})

    @classmethod
    def from_official(cls, vqgan_conf: dict[str, Any], quantizer: dict[str, Any] | None = None) -> "VQGANConfig":
        """Build from the official `vqgan_conf` (+ quantizer kwargs) dictionaries."""
        if "num_resolutions" in vqgan_conf and vqgan_conf["num_resolutions"] != len(vqgan_conf["channel_mult"]):
            raise ValueError("vqgan_conf: num_resolutions must equal len(channel_mult)")
        q = quantizer or {}
        z = vqgan_conf["z_channels"]
        if q.get("embedding_dim", z) != z:
            raise ValueError(f"quantizer embedding_dim {q['embedding_dim']} != z_channels {z}")
        return cls(
            channel_mult=tuple(vqgan_conf["channel_mult"]),
            hidden_channels=vqgan_conf["hidden_channels"],
            num_res_blocks=vqgan_conf["num_res_blocks"],
            z_channels=z,
            codebook_size=q.get("num_embeddings", 1024),
            resolution=vqgan_conf.get("resolution", 256),
            num_channels=vqgan_conf.get("num_channels", 3),
            dropout=vqgan_conf.get("dropout", 0.0),
            commitment_cost=q.get("commitment_cost", 0.25),
        )


@dataclass(frozen=True)
class TiTokConfig:
    """TiTok: ViT encoder with latent tokens, vector quantizer, ViT decoder to proxy-code logits.

    Args:
        image_size: input height = width.
        enc_patch_size / dec_patch_size: ViT patch sizes; the decoder predicts one proxy code per
            decoder patch, so the proxy grid is image_size // dec_patch_size on each side.
        enc_width, enc_layers, enc_heads / dec_*: ViT sizes.
        num_latent_tokens: N, the length of the 1-D token sequence.
        codebook_size: entries of the TiTok codebook (the tokens' vocabulary).
        token_size: dimension of a codebook vector.
        use_l2_norm: quantize on the unit sphere (all official models).
        commitment_cost: weight of the commitment term.
        proxy_codebook_size: classes predicted per grid position by the decoder head; 1024 in
            every official model (the MaskGIT-VQGAN codebook), independent of codebook_size.
        pixel_vqgan: the MaskGIT-VQGAN whose codebook and decoder turn proxy logits into pixels
            in the released form; unused by the stage-1 form.
        init_std: std of the ViTs' truncated-normal weight init. 0.02 is the official value, sized
            for widths >= 512; a much narrower ViT needs a larger one (see the `demo` preset).
    """

    image_size: int = 256
    enc_patch_size: int = 16
    dec_patch_size: int = 16
    enc_width: int = 1024
    enc_layers: int = 24
    enc_heads: int = 16
    dec_width: int = 1024
    dec_layers: int = 24
    dec_heads: int = 16
    num_latent_tokens: int = 32
    codebook_size: int = 4096
    token_size: int = 12
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    proxy_codebook_size: int = 1024
    pixel_vqgan: VQGANConfig = field(default_factory=VQGANConfig)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.pixel_vqgan, dict):
            object.__setattr__(self, "pixel_vqgan", VQGANConfig.from_dict(self.pixel_vqgan))
        if not isinstance(self.pixel_vqgan, VQGANConfig):
            raise ValueError(f"TiTokConfig.pixel_vqgan must be a VQGAN config object, got {self.pixel_vqgan!r}")
        check_fields(self, _TITOK_LIMITS)
        for side, ps in (("enc", self.enc_patch_size), ("dec", self.dec_patch_size)):
            if self.image_size % ps:
                raise ValueError(f"image_size {self.image_size} is not divisible by {side}_patch_size {ps}")
        for side, w, h in (("enc", self.enc_width, self.enc_heads), ("dec", self.dec_width, self.dec_heads)):
            if w % h:
                raise ValueError(f"{side}_width {w} is not divisible by {side}_heads {h}")
        if self.proxy_codebook_size != self.pixel_vqgan.codebook_size:
            raise ValueError(
                f"proxy_codebook_size {self.proxy_codebook_size} must equal the pixel VQGAN codebook "
                f"size {self.pixel_vqgan.codebook_size}: the decoder predicts that codebook's codes"
            )

    @property
    def enc_grid(self) -> int:
        return self.image_size // self.enc_patch_size

    @property
    def dec_grid(self) -> int:
        return self.image_size // self.dec_patch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pixel_vqgan"] = self.pixel_vqgan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TiTokConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TiTok config keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_official(
        cls,
        config: dict[str, Any],
        extra_sizes: dict[str, dict[str, int]] | None = None,
        pixel_vqgan: VQGANConfig | None = None,
    ) -> "TiTokConfig":
        """Build from the official nested config `{"model": {"vq_model": ...}, "dataset": ...}`.

        `extra_sizes` adds ViT size names beyond small/base/large, as
        `{"tiny": {"width": 64, "num_layers": 2, "num_heads": 4}}`.
        """
        vq = config["model"]["vq_model"]
        if not vq.get("is_legacy", True):
            raise ValueError("is_legacy=false TiTok models (pixel-predicting decoder) are not supported")
        if vq.get("quantize_mode", "vq") != "vq":
            raise ValueError(f"quantize_mode {vq['quantize_mode']!r} is not supported; only 'vq'")
        sizes = dict(VIT_SIZES)
        for name, s in (extra_sizes or {}).items():
            sizes[name] = (s["width"], s["num_layers"], s["num_heads"])

        def size(name: str) -> tuple[int, int, int]:
            if name not in sizes:
                raise ValueError(f"unknown ViT size {name!r}; known: {sorted(sizes)} (pass extra_sizes)")
            return sizes[name]

        ew, el, eh = size(vq["vit_enc_model_size"])
        dw, dl, dh = size(vq["vit_dec_model_size"])
        return cls(
            image_size=config["dataset"]["preprocessing"]["crop_size"],
            enc_patch_size=vq["vit_enc_patch_size"],
            dec_patch_size=vq["vit_dec_patch_size"],
            enc_width=ew, enc_layers=el, enc_heads=eh,
            dec_width=dw, dec_layers=dl, dec_heads=dh,
            num_latent_tokens=vq["num_latent_tokens"],
            codebook_size=vq["codebook_size"],
            token_size=vq["token_size"],
            use_l2_norm=vq["use_l2_norm"],
            commitment_cost=vq["commitment_cost"],
            pixel_vqgan=pixel_vqgan or VQGANConfig(),
        )


def _titok(size: str, num_latent_tokens: int) -> TiTokConfig:
    w, l, h = VIT_SIZES[size]
    return TiTokConfig(
        enc_width=w, enc_layers=l, enc_heads=h, dec_width=w, dec_layers=l, dec_heads=h,
        num_latent_tokens=num_latent_tokens,
    )


# The official MaskGIT-VQGAN f16-256 (maskgit-vqgan-imagenet-f16-256.bin).
VQGAN_PRESETS: dict[str, VQGANConfig] = {
    "f16-256": VQGANConfig(),
    # Small enough for 2-core CPU tests and the demo; same architecture, same 1024-code codebook
    # so proxy datasets made with it have the official layout.
    "debug": VQGANConfig(channel_mult=(1, 1, 2, 2, 2), hidden_channels=32, num_res_blocks=1, z_channels=32),
    # The offline demo's teacher, trained inside the demo in a few hundred steps: 32-px images,
    # 4x down-sampling (an 8x8 grid), 256 codes.
    "demo": VQGANConfig(channel_mult=(1, 2, 2), hidden_channels=32, num_res_blocks=1, z_channels=32,
                        codebook_size=256, resolution=32),
}

# The paper's tokenizers (codebook 4096 x 12, l2-normalised) and a tiny `debug` size.
PRESETS: dict[str, TiTokConfig] = {
    "S-128": _titok("small", 128),
    "B-64": _titok("base", 64),
    "L-32": _titok("large", 32),
    "debug": TiTokConfig(
        enc_width=64, enc_layers=2, enc_heads=4, dec_width=64, dec_layers=2, dec_heads=4,
        num_latent_tokens=32, codebook_size=256, pixel_vqgan=VQGAN_PRESETS["debug"],
    ),
    # The offline demo (`make demo`): 32-px images in 4-px patches, so that a 2-core CPU trains it
    # into a tokenizer whose reconstructions resemble their inputs in about a minute per stage.
    # init_std 0.08 = 0.02 * sqrt(1024 / 64): at width 64 the official 0.02 leaves attention uniform and
    # the latents nearly image-independent, and training then maps every image to one token sequence.
    # token_size 3: few dimensions on the unit sphere, so the 256 codes cover it densely.
    "demo": TiTokConfig(
        image_size=32, enc_patch_size=4, dec_patch_size=4,
        enc_width=64, enc_layers=2, enc_heads=4, dec_width=64, dec_layers=2, dec_heads=4,
        num_latent_tokens=32, codebook_size=256, token_size=3, proxy_codebook_size=256,
        pixel_vqgan=VQGAN_PRESETS["demo"], init_std=0.08,
    ),
}


def get_preset(name: str) -> TiTokConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown TiTok preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
