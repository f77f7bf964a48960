"""Checkpoints: the official `.bin` state dicts, the official Hugging Face Hub layout, and our own
`model.safetensors` + `config.json`.

Official files are plain state-dict pickles; they are read with `torch.load(weights_only=True)`
(no code runs) and renamed onto our modules. Their architecture is inferred from the tensor shapes,
so `load_model("tokenizer_titok_l32.bin")` needs no preset. The official Hub repositories
(`yucornetto/tokenizer_titok_l32_imagenet`, ...) are a directory of `model.safetensors` (the same
state dict under the same names) and `config.json` (the official nested config): sizes come from the
config and are cross-checked against the tensors. Our format is a directory whose config.json says
what the model is and every size in it, so it loads without knowing the preset.

Local paths only: fetching URLs, s3:// and Hub names (`HUB_MODELS`) into a cache is `pipelines.storage`'s job.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .generator import (
    BertGenerator,
    BertGeneratorConfig,
    GeneratorConfig,
    UViTGenerator,
    UViTGeneratorConfig,
    build_generator,
)
from .presets import VIT_SIZES, TiTokConfig, VQGANConfig
from .titok import TiTok, TiTokReleased
from .vqgan import MaskGITVQGAN

AnyModel = Union[MaskGITVQGAN, TiTok, TiTokReleased, BertGenerator, UViTGenerator]

HF_BASE = "https://huggingface.co/fun-research/TiTok/resolve/main"
OFFICIAL_URLS: dict[str, str] = {
    "maskgit-vqgan": f"{HF_BASE}/maskgit-vqgan-imagenet-f16-256.bin",
    "L-32": f"{HF_BASE}/tokenizer_titok_l32.bin",
    "B-64": f"{HF_BASE}/tokenizer_titok_b64.bin",
    "S-128": f"{HF_BASE}/tokenizer_titok_s128.bin",
}

# The official releases on the Hugging Face Hub, by preset. A name, not a download: `pipelines.storage`
# resolves it to a local path through huggingface_hub's cache. `hf://owner/name` is a repository in the
# Hub layout (model.safetensors + the official nested config.json, loaded by `load_official_dir`);
# `hf://owner/name/file` is one file of a repository. The teacher has no repository of its own: its
# name is the official file in the repository of OFFICIAL_URLS.
HUB_MODELS: dict[str, str] = {
    "maskgit-vqgan": "hf://fun-research/TiTok/maskgit-vqgan-imagenet-f16-256.bin",
    "L-32": "hf://yucornetto/tokenizer_titok_l32_imagenet",
    "B-64": "hf://yucornetto/tokenizer_titok_b64_imagenet",
    "S-128": "hf://yucornetto/tokenizer_titok_s128_imagenet",
}
GENERATOR_HUB_MODELS: dict[str, str] = {
    "L-32": "hf://yucornetto/generator_titok_l32_imagenet",
    "B-64": "hf://yucornetto/generator_titok_b64_imagenet",
    "S-128": "hf://yucornetto/generator_titok_s128_imagenet",
}

FORMAT_VERSION = 1
_KINDS = {"maskgit_vqgan": MaskGITVQGAN, "titok": TiTok, "titok_released": TiTokReleased,
          "bert_generator": BertGenerator, "uvit_generator": UViTGenerator}


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the model: one line listing what is wrong."""


# --------------------------------------------------------------------------------------------
# Official names <-> ours: one table of (official, ours) name patterns, compiled in both directions.
# `{part}`, `{i}`, `{wb}` stand for the values below; a pattern ending in "." renames a prefix,
# any other pattern a whole key.
_NAME_PARTS = {"part": "encoder|decoder", "i": r"\d+", "wb": "weight|bias"}
_TITOK_NAMES = [
    ("{part}.transformer.{i}.ln_1.", "{part}.blocks.{i}.norm1."),
    ("{part}.transformer.{i}.ln_2.", "{part}.blocks.{i}.norm2."),
    ("{part}.transformer.{i}.attn.in_proj_{wb}", "{part}.blocks.{i}.attn.qkv.{wb}"),
    ("{part}.transformer.{i}.attn.out_proj.", "{part}.blocks.{i}.attn.proj."),
    ("{part}.transformer.{i}.mlp.c_fc.", "{part}.blocks.{i}.mlp.fc1."),
    ("{part}.transformer.{i}.mlp.c_proj.", "{part}.blocks.{i}.mlp.fc2."),
    ("decoder.ffn.", "decoder.proxy_head."),
    ("latent_tokens", "encoder.latent_tokens"),
]
# The released form's pixel decoder; every other key of it belongs to the TiTok inside (`titok.`).
_RELEASED_NAMES = [("pixel_quantize.", "pixel.quantize."), ("pixel_decoder.", "pixel.decoder.")]


def _compile(pattern: str) -> re.Pattern:
    pieces = re.split(r"\{(\w+)\}", pattern)  # literal, name, literal, name, ...
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_NAME_PARTS[p]})" for i, p in enumerate(pieces))
    return re.compile("^" + body + ("" if pattern.endswith(".") else "$"))


def _rules(pairs: list[tuple[str, str]], to_ours: bool) -> list[tuple[re.Pattern, str]]:
    return [(_compile(o if to_ours else u), u if to_ours else o) for o, u in pairs]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for rx, template in rules:
        if m := rx.match(key):
            return template.format(**m.groupdict()) + key[m.end():]
    return None


_TO_OURS, _TO_OFFICIAL = _rules(_TITOK_NAMES, True), _rules(_TITOK_NAMES, False)
_RELEASED_TO_OURS, _RELEASED_TO_OFFICIAL = _rules(_RELEASED_NAMES, True), _rules(_RELEASED_NAMES, False)


def official_to_ours(key: str, released: bool) -> str:
    """Official TiTok / MaskGIT-VQGAN parameter name -> ours (`released`: the stage-2 form)."""
    if released and (pixel := _rename(key, _RELEASED_TO_OURS)) is not None:
        return pixel
    key = _rename(key, _TO_OURS) or key
    return f"titok.{key}" if released else key


def ours_to_official(key: str, released: bool) -> str:
    """Inverse of `official_to_ours`."""
    if released:
        if (pixel := _rename(key, _RELEASED_TO_OFFICIAL)) is not None:
            return pixel
        key = key.removeprefix("titok.")
    return _rename(key, _TO_OFFICIAL) or key


# --------------------------------------------------------------------------------------------
# Architecture from shapes.
def _count(sd: dict[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_vqgan_config(sd: dict[str, Tensor], prefix: str = "", quantizer_prefix: str = "quantize.") -> VQGANConfig:
    """MaskGIT-VQGAN sizes from a state dict holding `{prefix}decoder.*` and the codebook."""
    try:
        codebook = sd[f"{quantizer_prefix}embedding.weight"]
        levels = _count(sd, rf"^{re.escape(prefix)}decoder\.up\.(\d+)\.")
        ch = [sd[f"{prefix}decoder.up.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
        res_blocks = _count(sd, rf"^{re.escape(prefix)}decoder\.up\.0\.block\.(\d+)\.")
    except KeyError as e:
        raise CheckpointMismatchError(f"not a MaskGIT-VQGAN state dict: missing {e.args[0]!r}") from None
    hidden = math.gcd(*ch)
    return VQGANConfig(
        channel_mult=tuple(c // hidden for c in ch),
        hidden_channels=hidden,
        num_res_blocks=res_blocks,
        z_channels=codebook.shape[1],
        codebook_size=codebook.shape[0],
    )


def titok_shapes(sd: dict[str, Tensor]) -> dict[str, int]:
    """Every TiTok size an official state dict shows: all of TiTokConfig but the head counts."""
    try:
        n, enc_w = sd["latent_tokens"].shape
        patch = sd["encoder.patch_embed.weight"].shape[-1]
        enc_grid = math.isqrt(sd["encoder.positional_embedding"].shape[0] - 1)
        dec_w, token_size = sd["decoder.decoder_embed.weight"].shape
        dec_grid = math.isqrt(sd["decoder.positional_embedding"].shape[0] - 1)
        codebook_size = sd["quantize.embedding.weight"].shape[0]
        proxy = sd["decoder.ffn.2.weight"].shape[0]
    except KeyError as e:
        raise CheckpointMismatchError(f"not an official TiTok state dict: missing {e.args[0]!r}") from None
    image = enc_grid * patch
    return dict(
        image_size=image, enc_patch_size=patch, dec_patch_size=image // dec_grid,
        enc_width=enc_w, enc_layers=_count(sd, r"^encoder\.transformer\.(\d+)\."),
        dec_width=dec_w, dec_layers=_count(sd, r"^decoder\.transformer\.(\d+)\."),
        num_latent_tokens=n, codebook_size=codebook_size, token_size=token_size, proxy_codebook_size=proxy,
    )


def infer_titok_config(sd: dict[str, Tensor]) -> TiTokConfig:
    """TiTok sizes from an official state dict. Head counts come from the official size table."""
    heads_by_width = {w: h for w, _, h in VIT_SIZES.values()}
    sizes = titok_shapes(sd)
    for w in (sizes["enc_width"], sizes["dec_width"]):
        if w not in heads_by_width:
            raise CheckpointMismatchError(f"ViT width {w} is not an official size; save it in our format with its config")
    released = any(k.startswith("pixel_decoder.") for k in sd)
    pixel = infer_vqgan_config(sd, "pixel_", "pixel_quantize.") if released else VQGANConfig()
    return TiTokConfig(**sizes, enc_heads=heads_by_width[sizes["enc_width"]],
                       dec_heads=heads_by_width[sizes["dec_width"]], pixel_vqgan=pixel)


# --------------------------------------------------------------------------------------------
# Generators: official names <-> ours, and their sizes from shapes. The U-ViT's names are already
# the official ones. The BERT-style generator's are Hugging Face BertModel's under `model.`, with
# separate query / key / value projections that our blocks hold as one fused qkv (rows q, k, v).
GENERATOR_URLS: dict[str, str] = {
    "L-32": f"{HF_BASE}/generator_titok_l32.bin",
    "B-64": f"{HF_BASE}/generator_titok_b64.bin",
    "S-128": f"{HF_BASE}/generator_titok_s128.bin",
}
_BERT_LAYER = r"model\.encoder\.layer\.(\d+)\."
_BERT_RULES = [  # (official regex, ours); applied one way, inverted by _BERT_INVERSE
    (r"^model\.embeddings\.word_embeddings\.", r"word_embed."),
    (r"^model\.embeddings\.position_embeddings\.", r"pos_embed."),
    (r"^model\.embeddings\.token_type_embeddings\.", r"type_embed."),
    (r"^model\.embeddings\.LayerNorm\.", r"embed_norm."),
    (rf"^{_BERT_LAYER}attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (rf"^{_BERT_LAYER}attention\.output\.LayerNorm\.", r"blocks.\1.norm1."),
    (rf"^{_BERT_LAYER}intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (rf"^{_BERT_LAYER}output\.dense\.", r"blocks.\1.mlp.fc2."),
    (rf"^{_BERT_LAYER}output\.LayerNorm\.", r"blocks.\1.norm2."),
    (r"^model\.lm_head\.", r"lm_head."),
]
_BERT_INVERSE = [
    (r"^word_embed\.", "model.embeddings.word_embeddings."),
    (r"^pos_embed\.", "model.embeddings.position_embeddings."),
    (r"^type_embed\.", "model.embeddings.token_type_embeddings."),
    (r"^embed_norm\.", "model.embeddings.LayerNorm."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"model.encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.norm1\.", r"model.encoder.layer.\1.attention.output.LayerNorm."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"model.encoder.layer.\1.intermediate.dense."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"model.encoder.layer.\1.output.dense."),
    (r"^blocks\.(\d+)\.norm2\.", r"model.encoder.layer.\1.output.LayerNorm."),
    (r"^lm_head\.", "model.lm_head."),
]
_BERT_QKV = re.compile(rf"^{_BERT_LAYER}attention\.self\.(query|key|value)\.(weight|bias)$")
# Written by older transformers versions as a persistent buffer: arange(N + 1), nothing learned.
_BERT_STALE_BUFFER = "model.embeddings.position_ids"


def is_official_generator(sd: dict[str, Tensor]) -> bool:
    return "model.embeddings.word_embeddings.weight" in sd or {"pos_embed", "embeddings.weight"} <= set(sd)


def generator_official_to_ours(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official generator state dict -> ours (BERT: renamed, q/k/v fused; U-ViT: unchanged).

    A q/k/v triple with a part missing stays under its official names, so a strict load names it.
    """
    if "model.embeddings.word_embeddings.weight" not in sd:
        return dict(sd)
    out, qkv = {}, {}
    for k, v in sd.items():
        if k == _BERT_STALE_BUFFER:
            continue
        if m := _BERT_QKV.match(k):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = (k, v)
            continue
        for pat, rep in _BERT_RULES:
            if re.match(pat, k):
                k = re.sub(pat, rep, k)
                break
        out[k] = v
    for (layer, param), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts[p][1] for p in ("query", "key", "value")])
        else:
            out.update(dict(parts.values()))
    return out


def generator_ours_to_official(model_or_sd: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `generator_official_to_ours`: the state dict under the official names (in the
    official order for the BERT-style generator), e.g. to write an official-format `.bin`."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    if "word_embed.weight" not in sd:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        if m := re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", k):
            # Official order: query.weight, query.bias, key.weight, ...
            params = [p for p in ("weight", "bias") if f"blocks.{m.group(1)}.attn.qkv.{p}" in sd]
            if m.group(2) == params[0]:
                parts = {p: sd[f"blocks.{m.group(1)}.attn.qkv.{p}"].chunk(3) for p in params}
                for i, name in enumerate(("query", "key", "value")):
                    for p in params:
                        out[f"model.encoder.layer.{m.group(1)}.attention.self.{name}.{p}"] = parts[p][i]
            continue
        for pat, rep in _BERT_INVERSE:
            if re.match(pat, k):
                k = re.sub(pat, rep, k)
                break
        out[k] = v
    return out


# Shapes do not tell the head count; every official generator config uses 16 heads.
_GENERATOR_HEADS_BY_WIDTH = {768: 16, 1024: 16}


def generator_shapes(sd: dict[str, Tensor]) -> dict[str, int | str]:
    """Every generator size an official state dict shows: the architecture ("bert" / "uvit") and all of
    its config but the head count and dropout rates. `depth` of a U-ViT is 2 x its in-blocks (or 1)."""
    bert = "model.embeddings.word_embeddings.weight" in sd
    try:
        if bert:
            vocab, width = sd["model.embeddings.word_embeddings.weight"].shape
            n = sd["model.embeddings.position_embeddings.weight"].shape[0] - 1
            depth = _count(sd, r"^model\.encoder\.layer\.(\d+)\.")
            mlp = sd["model.encoder.layer.0.intermediate.dense.weight"].shape[0]
            k = sd["model.lm_head.weight"].shape[0]
        else:
            vocab, width = sd["embeddings.weight"].shape
            n = sd["pos_embed"].shape[1] - 1
            depth = 2 * _count(sd, r"^in_blocks\.(\d+)\.") or 1  # no in-blocks: a mid-block only, i.e. depth 1
            mlp = sd["mid_block.mlp.fc1.weight"].shape[0]
            k = sd["lm_head.weight"].shape[0]
    except KeyError as e:
        raise CheckpointMismatchError(f"not an official generator state dict: missing {e.args[0]!r}") from None
    return dict(architecture="bert" if bert else "uvit", codebook_size=k, num_latent_tokens=n,
                num_classes=vocab - k - 2, width=width, depth=depth, mlp_dim=mlp)


def infer_generator_config(sd: dict[str, Tensor]) -> BertGeneratorConfig | UViTGeneratorConfig:
    """Generator sizes from an official state dict (dropout rates: the official 0.1)."""
    sizes = generator_shapes(sd)
    width = sizes["width"]
    if width not in _GENERATOR_HEADS_BY_WIDTH:
        raise CheckpointMismatchError(
            f"generator width {width} is not an official size (the head count is unknown); "
            "save it in our format with its config")
    cls = BertGeneratorConfig if sizes.pop("architecture") == "bert" else UViTGeneratorConfig
    try:
        return cls(**sizes, num_heads=_GENERATOR_HEADS_BY_WIDTH[width])
    except ValueError as e:
        raise CheckpointMismatchError(f"inconsistent generator state dict: {e}") from None


def _generator_from_official(sd: dict[str, Tensor], source: str,
                             cfg: BertGeneratorConfig | UViTGeneratorConfig | None = None) -> BertGenerator | UViTGenerator:
    sd = {k: v for k, v in sd.items() if k != _BERT_STALE_BUFFER}
    model = _empty(build_generator, cfg or infer_generator_config(sd))
    # Check under the official names (those in the user's file), then load ours.
    expected = generator_ours_to_official(model)
    check_state_dict({k: tuple(v.shape) for k, v in expected.items()}, sd, type(model).__name__, source)
    load_state_dict_strict(model, generator_official_to_ours(sd), source)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Loading.
def check_state_dict(expected: dict[str, tuple[int, ...]], sd: dict[str, Tensor], what: str, source: str) -> None:
    """Raise one CheckpointMismatchError naming missing / unexpected / mis-shaped keys, if any."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v)}" for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v)]
    if missing or unexpected or shapes:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = [f"{name} {len(xs)}: {few(xs)}" for name, xs in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if xs]
        raise CheckpointMismatchError(f"{source} does not fit {what}: " + "; ".join(parts))


def load_state_dict_strict(model: nn.Module, sd: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load or raise one CheckpointMismatchError naming missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in own.items()}, sd, type(model).__name__, source)
    # A model built on the meta device takes the checkpoint's tensors as they are (no copy).
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict(sd, strict=True, assign=on_meta)


def _empty(cls, cfg):
    """Build without allocating or initialising weights (a checkpoint fills them): seconds saved at L-32.

    `cls` is a model class or a factory such as `build_generator`."""
    with torch.device("meta"):
        return cls(cfg)


def read_official(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read an official `.bin` state dict safely (weights_only: tensors only, no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e) and "zipfile" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or not a torch file at all
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointMismatchError(f"{path} is not a plain state-dict file ({type(e).__name__}: {first})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat state dict of tensors")
    return sd


def model_from_official(sd: dict[str, Tensor], source: str = "checkpoint", config: dict | None = None) -> AnyModel:
    """Build and load the model an official state dict describes (teacher, stage-1 or released TiTok,
    BERT-style or U-ViT generator).

    Args:
        sd: the state dict under the official names.
        source: where it came from, for messages.
        config: the official nested config that came with it (a Hub repository's config.json): the sizes
            are then taken from it and cross-checked against the tensors. Without it they are inferred
            from the tensor shapes (head counts from the official size tables).
    """
    if config is not None:
        config = resolve_interpolations(config, source)
    if is_official_generator(sd):
        gen_cfg = None if config is None else _generator_config(config, sd, source)
        return _generator_from_official(sd, source, gen_cfg)
    if "latent_tokens" in sd:
        released = any(k.startswith("pixel_decoder.") for k in sd)
        cfg = infer_titok_config(sd) if config is None else _titok_config(config, sd, released, source)
        model: AnyModel = _empty(TiTokReleased if released else TiTok, cfg)
        sd = {official_to_ours(k, released): v for k, v in sd.items()}
    elif any(k.startswith("encoder.conv_in") for k in sd):
        model = _empty(MaskGITVQGAN, infer_vqgan_config(sd) if config is None else _vqgan_config(config, sd, source))
    else:
        raise CheckpointMismatchError(f"{source}: neither a TiTok, a MaskGIT-VQGAN nor a generator state dict")
    load_state_dict_strict(model, sd, source)
    return model.eval()


# --------------------------------------------------------------------------------------------
# The official Hugging Face Hub layout: model.safetensors (official names) + the official nested config.
_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def resolve_interpolations(config: dict, source: str = "config.json") -> dict:
    """`config` with every OmegaConf reference `${a.b.c}` replaced by the value it names.

    The official configs are OmegaConf YAML (the generator's `image_seq_len:
    ${model.vq_model.num_latent_tokens}`), and the official `save_pretrained` writes them to
    config.json without resolving the references.
    """
    def lookup(path: str, seen: frozenset[str]) -> Any:
        node: Any = config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CheckpointMismatchError(f"{source}: ${{{path}}} names no value in config.json")
            node = node[part]
        return resolve(node, seen | {path})

    def resolve(node: Any, seen: frozenset[str] = frozenset()) -> Any:
        if isinstance(node, dict):
            return {k: resolve(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, seen) for v in node]
        if isinstance(node, str) and (m := _REFERENCE.match(node)):
            if m.group(1) in seen:
                raise CheckpointMismatchError(f"{source}: config.json reference ${{{m.group(1)}}} refers to itself")
            return lookup(m.group(1), seen)
        return node

    return resolve(config)


def _from_config(build: Callable[[], Any], source: str) -> Any:
    """`build()` (a `from_official`), its KeyError / ValueError as one line naming the config."""
    try:
        return build()
    except KeyError as e:
        raise CheckpointMismatchError(f"{source}: config.json has no {e.args[0]!r} entry "
                                      "(expected the official nested config)") from None
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"{source}: config.json: {str(e).splitlines()[0]}") from None


def _cross_check(source: str, says: dict[str, Any], holds: dict[str, Any]) -> None:
    """One line naming every size on which config.json and the tensors disagree."""
    wrong = [f"{k} {says[k]} != {holds[k]}" for k in holds if says[k] != holds[k]]
    if wrong:
        raise CheckpointMismatchError(f"{source}: config.json does not describe model.safetensors "
                                      f"(config != tensors): {'; '.join(wrong)}")


def _titok_config(config: dict, sd: dict[str, Tensor], released: bool, source: str) -> TiTokConfig:
    vq = _from_config(lambda: config["model"]["vq_model"], source)
    says_released = bool(vq.get("finetune_decoder", True))  # the official default
    if says_released != released:
        form, holds = ("released", "no pixel_decoder.* tensors") if says_released else ("stage-1", "a pixel decoder")
        raise CheckpointMismatchError(f"{source}: config.json says finetune_decoder={str(says_released).lower()} "
                                      f"(the {form} form) but model.safetensors holds {holds}")
    # The official code fixes the pixel decoder's sizes (the MaskGIT-VQGAN's); the tensors say them.
    pixel = infer_vqgan_config(sd, "pixel_", "pixel_quantize.") if released else VQGANConfig()
    cfg = _from_config(lambda: TiTokConfig.from_official(config, config.get("extra_size_map"), pixel_vqgan=pixel),
                       source)
    shapes = titok_shapes(sd)
    _cross_check(source, {k: getattr(cfg, k) for k in shapes}, shapes)
    return cfg


def _vqgan_channels(cfg: VQGANConfig) -> dict[str, Any]:
    return {"channels": tuple(cfg.hidden_channels * m for m in cfg.channel_mult),
            "num_res_blocks": cfg.num_res_blocks, "z_channels": cfg.z_channels, "codebook_size": cfg.codebook_size}


def _vqgan_config(config: dict, sd: dict[str, Tensor], source: str) -> VQGANConfig:
    cfg = _from_config(lambda: VQGANConfig.from_official(config["vqgan_conf"], config.get("quantizer")), source)
    _cross_check(source, _vqgan_channels(cfg), _vqgan_channels(infer_vqgan_config(sd)))
    return cfg


def _generator_config(config: dict, sd: dict[str, Tensor], source: str) -> BertGeneratorConfig | UViTGeneratorConfig:
    cfg = _from_config(lambda: GeneratorConfig.from_official(config), source)
    shapes = generator_shapes(sd)
    says = {k: getattr(cfg, k) for k in shapes if k != "architecture"}
    says["architecture"] = "bert" if isinstance(cfg, BertGeneratorConfig) else "uvit"
    if says["architecture"] == "uvit":  # depth d has d // 2 in- and out-blocks: 20 and 21 are the same model
        says["depth"] = 2 * (cfg.depth // 2) or 1
    _cross_check(source, says, shapes)
    return cfg


def is_official_config(meta: Any) -> bool:
    """True for an official nested config (a Hub repository's config.json), False for ours."""
    return isinstance(meta, dict) and "kind" not in meta and ("model" in meta or "vqgan_conf" in meta)


def _read_dir(directory: Path) -> tuple[dict, Path]:
    """(config.json content, path of model.safetensors) of a model directory, or one-line errors."""
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for path in (cfg_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {path.name} (expected model.safetensors + config.json)")
    return read_config_json(cfg_path), weights


def load_official_dir(directory: str | os.PathLike) -> AnyModel:
    """Load a directory in the official Hugging Face Hub layout (what `hf://yucornetto/...` resolves to).

    `model.safetensors` holds the official module's state dict under the official names (a released
    tokenizer with its pixel quantizer and decoder, a stage-1 tokenizer, a generator, or the teacher);
    `config.json` is the official nested config (`{"model": {"vq_model": {...}}, "dataset": {...}}`,
    `{"model": {"vq_model": {...}, "generator": {...}}}`, or the teacher's `{"vqgan_conf": ...,
    "quantizer": ...}`). Which model it is comes from the tensors (one official config may describe a
    tokenizer and its generator); its sizes from the config, cross-checked against the tensors; the
    names map as for an official `.bin`. Beyond the official keys, config.json may hold
    `extra_size_map` (as the conformance fixtures' fixture_meta.json: `{"tiny": {"width": 64,
    "num_layers": 2, "num_heads": 4}}`) to name ViT sizes the official table lacks, so that a small
    model can be written in this layout; official releases never need it.
    """
    directory = Path(directory)
    meta, weights = _read_dir(directory)
    if not is_official_config(meta):
        raise CheckpointMismatchError(f"{directory / 'config.json'} is not an official config "
                                      "(no 'model' or 'vqgan_conf' section)")
    return model_from_official(load_file(str(weights)), str(directory), config=meta)


def save_pretrained(model: AnyModel, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write `model.safetensors` + `config.json` into `directory` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = {cls: name for name, cls in _KINDS.items()}[type(model)]
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "config": model.config.to_dict(), **(extra or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"kind": kind})
    os.replace(tmp, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_pretrained(directory: str | os.PathLike) -> AnyModel:
    """Load a model directory: ours (written by `save_pretrained`; the preset need not be known) or the
    official Hugging Face Hub layout (`load_official_dir`).

    Ours is checked before a model is built or a tensor read: config.json must be a JSON object with a
    known `kind` and a valid `config` (types and sane bounds), and model.safetensors' header must list
    exactly the model's tensors with their shapes, for its size on disk.

    Raises:
        FileNotFoundError: config.json or model.safetensors missing.
        CheckpointMismatchError: one line naming the file and what is wrong with it.
    """
    directory = Path(directory)
    meta, weights = _read_dir(directory)
    if is_official_config(meta):
        return load_official_dir(directory)
    cfg_path = directory / "config.json"
    kind = meta.get("kind")
    if kind not in _KINDS:
        raise CheckpointMismatchError(f"{cfg_path}: unknown model kind {kind!r}; expected one of "
                                      f"{sorted(_KINDS)} (ours) or an official nested config")
    cfg_cls = {"maskgit_vqgan": VQGANConfig, "bert_generator": BertGeneratorConfig,
               "uvit_generator": UViTGeneratorConfig}.get(kind, TiTokConfig)
    if not isinstance(meta.get("config"), dict):
        raise CheckpointMismatchError(f"{cfg_path}: 'config' must be an object with the model's sizes")
    try:
        cfg = cfg_cls.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointMismatchError(f"{cfg_path}: {str(e).splitlines()[0]}") from None
    model = _empty(_KINDS[kind], cfg)
    check_safetensors_header(weights, model)
    try:
        sd = load_file(str(weights))
    except Exception as e:  # the header was fine but the data is not
        raise CheckpointMismatchError(f"{weights} cannot be read ({type(e).__name__}: {str(e)[:150]})") from None
    load_state_dict_strict(model, sd, str(directory))
    return model.eval()


def read_config_json(path: Path) -> dict:
    """A config.json as a dict; one CheckpointMismatchError line naming the file otherwise."""
    try:
        meta = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise CheckpointMismatchError(f"{path} is not a text file") from None
    except json.JSONDecodeError as e:
        raise CheckpointMismatchError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(meta, dict):
        raise CheckpointMismatchError(f"{path} must hold a JSON object, not a {type(meta).__name__}")
    return meta


_SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                            "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def check_safetensors_header(path: Path, model: nn.Module) -> None:
    """model.safetensors' header (read alone, no tensor data) against `model` (built on the meta device):
    a readable header, exactly the model's tensor names and shapes, and a file size that holds them.

    Raises:
        FileNotFoundError / CheckpointMismatchError: one line naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected model.safetensors beside config.json)")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        data_bytes = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        shapes = {k: tuple(int(d) for d in t["shape"]) for k, t in header.items()}
        declared = sum(_SAFETENSORS_DTYPE_BYTES.get(t["dtype"], 0) * math.prod(shapes[k]) for k, t in header.items())
    except Exception as e:
        raise CheckpointMismatchError(f"{path} is not a safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
    if 8 + n + data_bytes != size or declared != data_bytes:
        raise CheckpointMismatchError(f"{path} is damaged: its header declares {data_bytes} bytes of tensors, "
                                      f"the file holds {size - 8 - n}")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    params = sum(math.prod(s) for s in own.values())
    if shapes != own:
        missing, unexpected = sorted(set(own) - set(shapes)), sorted(set(shapes) - set(own))
        wrong = [k for k in own if k in shapes and shapes[k] != own[k]]
        detail = "; ".join(f"{what} {len(xs)}: {', '.join(xs[:3])}" for what, xs in
                           (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)) if xs)
        raise CheckpointMismatchError(f"{path} does not hold the {params:,}-parameter {type(model).__name__} its "
                                      f"config.json describes ({detail})")


def load_model(path: str | os.PathLike) -> AnyModel:
    """Load any supported checkpoint from a local path: our directory, a directory in the official Hub
    layout (model.safetensors + the official config.json), or an official `.bin`."""
    p = Path(path)
    if p.is_dir():
        return load_pretrained(p)
    if p.suffix == ".safetensors" and (p.parent / "config.json").is_file():
        return load_pretrained(p.parent)
    return model_from_official(read_official(p), str(p))
