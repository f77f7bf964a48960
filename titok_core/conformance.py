"""Check our models against reference numbers from the official implementation.

    python -m titok_core.conformance DIR [DIR ...]

DIR is a fixture set (a folder of fixture folders, like `shared/conformance/public`) or a single
fixture folder. Every size is read from each fixture's `config.json` / `fixture_meta.json`. One
line per compared tensor with its max abs error; exit status 1 on any failure.
Integers must match exactly; floats within atol 1e-4 + rtol 1e-4 (about 10x the reference's own
float32 noise); scalar losses within rtol 1e-5.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from .checkpoints import generator_official_to_ours, load_state_dict_strict, official_to_ours
from .generator import GeneratorConfig, build_generator
from .masking import mask_tokens
from .presets import TiTokConfig, VQGANConfig
from .quantizer import VectorQuantizer
from .sampling import SamplingConfig, generate
from .titok import TiTok, TiTokReleased
from .vqgan import MaskGITVQGAN, VQGANQuantizer

ATOL, RTOL, LOSS_RTOL = 1e-4, 1e-4, 1e-5


@dataclass
class Comparison:
    fixture: str
    key: str
    ok: bool
    max_abs: float | None
    note: str = ""

    def line(self) -> str:
        err = "" if self.max_abs is None else f"max_abs={self.max_abs:.3g}"
        return f"{'PASS' if self.ok else 'FAIL'}  {self.fixture}/{self.key}  {err} {self.note}".rstrip()


def compare(fixture: str, key: str, actual: Tensor | None, expected: Tensor) -> Comparison:
    if actual is None:
        return Comparison(fixture, key, False, None, "not produced by our implementation")
    actual = actual.detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        return Comparison(fixture, key, False, None, f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.is_floating_point():
        diff = (actual.double() - expected.double()).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        rtol, atol = (LOSS_RTOL, 0.0) if expected.dim() == 0 else (RTOL, ATOL)
        ok = bool((diff <= atol + rtol * expected.double().abs()).all())
        return Comparison(fixture, key, ok, max_abs)
    mismatches = int((actual.long() != expected.long()).sum())
    return Comparison(fixture, key, mismatches == 0, float(mismatches), "(integer: mismatching entries)")


@contextlib.contextmanager
def capture(model: nn.Module, modules: dict[str, str], store: dict[str, Tensor], inputs: set[str] = frozenset()) -> Iterator[None]:
    """Record outputs (or, for names in `inputs`, the first input) of `model`'s sub-modules.

    `modules` maps the name to store under -> our module path; the first call of a module wins.
    """
    named = dict(model.named_modules())
    handles = []
    for name, path in modules.items():
        if path not in named:
            continue
        def hook(mod, args, out=None, name=name):
            store.setdefault(name, (args[0] if out is None else out).detach().clone())
        if name in inputs:
            handles.append(named[path].register_forward_pre_hook(hook))
        else:
            handles.append(named[path].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _titok_module_path(official: str, released: bool) -> str:
    """Official module path (e.g. `encoder.transformer.3`, `pixel_decoder.up.2`) -> ours."""
    official = official.removesuffix(".input")  # `X.input` names the input of module X
    if official.startswith("pixel_decoder"):
        return "pixel.decoder" + official[len("pixel_decoder"):]
    path = re.sub(r"\.transformer\.(\d+)$", r".blocks.\1", official)
    return f"titok.{path}" if released else path


# --------------------------------------------------------------------------------------------
# One runner per fixture kind: build the model from the fixture's config, return what it computes.
Outputs = dict[str, Tensor]


def run_vqgan(d: Path, cfg: dict, meta: dict, wanted_inter: set[str]) -> tuple[Outputs, Outputs]:
    model = MaskGITVQGAN(VQGANConfig.from_official(cfg["vqgan_conf"], cfg.get("quantizer"))).eval()
    load_state_dict_strict(model, load_file(str(d / "weights.safetensors")), str(d))
    x = load_file(str(d / "inputs.safetensors"))["pixel_values"]
    out, inter = {}, {}
    mods = {n: n for n in wanted_inter}
    with torch.no_grad():
        with capture(model, {n: p for n, p in mods.items() if n.startswith("encoder.")}, inter):
            h = model.encoder(x)
        out["encoder_hidden_states"] = h
        out["quantized_states"] = model.quantize(h)[0]
        out["codebook_indices"] = idx = model.encode(x)
        out["quantized_states_from_indices"] = zq = model.quantize.get_codebook_entry(idx)
        with capture(model, {n: p for n, p in mods.items() if n.startswith("decoder.")}, inter):
            out["decoded_unclamped"] = model.decoder(zq)
        out["decoded_clamped"] = model.decode(idx)
        out["distances"] = model.quantize.distances(h)
        out["soft_code_t1"] = model.quantize.get_soft_code(h, temp=1.0)
    return out, inter


def run_titok(d: Path, cfg: dict, meta: dict, wanted_inter: set[str]) -> tuple[Outputs, Outputs]:
    patch = meta.get("pixel_vqgan_patch", {})
    pixel = (VQGANConfig.from_official(patch["used_pixel_decoder_conf"], patch.get("used_pixel_quantizer"))
             if "used_pixel_decoder_conf" in patch else VQGANConfig())
    tcfg = TiTokConfig.from_official(cfg, meta.get("extra_size_map"), pixel_vqgan=pixel)
    released = bool(cfg["model"]["vq_model"].get("finetune_decoder", True))
    model = (TiTokReleased(tcfg) if released else TiTok(tcfg)).eval()
    sd = {official_to_ours(k, released): v for k, v in load_file(str(d / "weights.safetensors")).items()}
    load_state_dict_strict(model, sd, str(d))
    titok = model.titok if released else model
    x = load_file(str(d / "inputs.safetensors"))["pixel_values"]

    def mods(phase: str) -> dict[str, str]:
        return {n: _titok_module_path(n.split("/", 1)[1], released) for n in wanted_inter if n.startswith(phase + "/")}

    out, inter = {}, {}
    with torch.no_grad():
        with capture(model, mods("encode"), inter):
            out["z"] = z = titok.encoder(x)
        z_q, q = titok.quantize(z)
        if released:  # the released form freezes the encoder: its forward reports zero losses
            _, q_losses = model(x)
        else:
            q_losses = q
        out.update(z_quantized=z_q, min_encoding_indices=q.codes.view(x.shape[0], 1, -1),
                   quantizer_loss=q_losses.quantizer_loss, commitment_loss=q_losses.commitment_loss,
                   codebook_loss=q_losses.codebook_loss,
                   codebook_entries_of_tokens=titok.quantize.get_codebook_entry(q.codes.flatten()))
        decode_mods = mods("decode")
        with capture(model, decode_mods, inter, inputs={n for n in decode_mods if n.endswith(".input")}):
            out["decoded"] = model.decode(z_q)
        out["decode_tokens"] = model.decode_tokens(q.codes)
    return out, inter


def run_quantizer(d: Path, cfg: dict, meta: dict, wanted_inter: set[str]) -> tuple[Outputs, Outputs]:
    if cfg.get("clustering_vq"):
        raise ValueError("clustering_vq quantizers are not supported")
    q = VectorQuantizer(cfg["codebook_size"], cfg["token_size"], cfg["commitment_cost"], cfg["use_l2_norm"])
    load_state_dict_strict(q, load_file(str(d / "weights.safetensors")), str(d))
    inputs = load_file(str(d / "inputs.safetensors"))
    z = inputs["z"].clone().requires_grad_(True)
    z_q, res = q.train()(z)
    (grad,) = torch.autograd.grad((z_q * inputs["grad_weight"]).sum(), z)
    return {
        "z_quantized": z_q, "min_encoding_indices": res.codes.view(z.shape[0], z.shape[2], z.shape[3]),
        "quantizer_loss": res.quantizer_loss, "commitment_loss": res.commitment_loss,
        "codebook_loss": res.codebook_loss,
        "codebook_entries_of_indices": q.get_codebook_entry(res.codes.flatten()), "grad_z": grad,
    }, {}


def run_vqgan_quantizer(d: Path, cfg: dict, meta: dict, wanted_inter: set[str]) -> tuple[Outputs, Outputs]:
    q = VQGANQuantizer(cfg["num_embeddings"], cfg["embedding_dim"], cfg["commitment_cost"])
    load_state_dict_strict(q, load_file(str(d / "weights.safetensors")), str(d))
    h = load_file(str(d / "inputs.safetensors"))["hidden_states"]
    with torch.no_grad():
        z_q, idx, _ = q(h)
        z_q_loss, _, loss = q(h, return_loss=True)
        return {"z_q": z_q, "indices": idx, "z_q_with_loss": z_q_loss, "loss": loss,
                "codebook_entry_of_indices": q.get_codebook_entry(idx), "get_code": q.get_code(h),
                "distances": q.distances(h)}, {}


RNG_FILE = "expected_torch_rng.safetensors"  # optional: outputs under a seeded global torch generator


def run_generator(d: Path, cfg: dict, meta: dict, wanted_inter: set[str]) -> tuple[Outputs, Outputs]:
    """Logits, every deterministic sampling variant step by step, and (if the fixture has the
    optional RNG file) seeded sampling and training-time masking; RNG outputs are named `torch_rng/<key>`."""
    model = build_generator(GeneratorConfig.from_official(cfg)).eval()
    load_state_dict_strict(model, generator_official_to_ours(load_file(str(d / "weights.safetensors"))), str(d))
    inputs = load_file(str(d / "inputs.safetensors"))
    ids, condition = inputs["input_ids"], inputs["condition"]
    mask_id, seed = model.config.mask_token_id, int(meta.get("seed", 0))
    out = {}
    with torch.no_grad():
        out["logits_cond"] = model(ids, condition, cond_drop_prob=0.0)
        out["logits_uncond"] = model(ids, condition, cond_drop_prob=1.0)
        out["logits_all_masked_cond"] = model(torch.full_like(ids, mask_id), condition, cond_drop_prob=0.0)
    torch.manual_seed(seed + int(meta.get("generate_manual_seed", 100)))
    for name, kwargs in meta.get("generate_variants", {}).items():
        sc = SamplingConfig(**{"num_sample_steps": meta["num_sample_steps"],
                               "randomize_temperature": meta.get("randomize_temperature", 0.0), **kwargs})
        out[f"generate/{name}/ids"], out[f"generate/{name}/step_inputs"] = generate(
            model, condition, sc, return_step_inputs=True)
    if (d / RNG_FILE).exists():
        with safe_open(str(d / RNG_FILE), "pt") as f:
            keys, file_meta = list(f.keys()), f.metadata() or {}
        rng = meta.get("torch_rng", {})
        # The file's metadata holds the seeds used; fixture_meta.json holds offsets from `seed`.
        gen_seed = int(file_meta.get("generate_seed", seed + rng.get("generate_manual_seed", 200)))
        mask_seed = int(file_meta.get("masking_seed", seed + rng.get("masking_manual_seed", 300)))
        if any(k.startswith("generate") for k in keys):
            torch.manual_seed(gen_seed)
            sampled = generate(model, condition,
                               SamplingConfig(**{"num_sample_steps": meta["num_sample_steps"], **rng["generate_kwargs"]}))
            out.update({f"torch_rng/{k}": sampled for k in keys if k.startswith("generate")})
        torch.manual_seed(mask_seed)
        masked, masks = mask_tokens(inputs["tokens_for_masking"], mask_id)
        out["torch_rng/masking_input_tokens/masked_tokens"] = masked
        out["torch_rng/masking_input_tokens/masks"] = masks
    return out, {}


def fixture_kind(cfg: dict) -> str:
    if "vqgan_conf" in cfg:
        return "maskgit_vqgan"
    if "model" in cfg:
        return "generator" if "generator" in cfg["model"] else "titok"
    if "use_l2_norm" in cfg:
        return "titok_quantizer"
    if "num_embeddings" in cfg:
        return "vqgan_quantizer"
    return "unknown"


RUNNERS: dict[str, Callable[..., tuple[Outputs, Outputs]]] = {
    "maskgit_vqgan": run_vqgan, "titok": run_titok,
    "titok_quantizer": run_quantizer, "vqgan_quantizer": run_vqgan_quantizer, "generator": run_generator,
}


def check_fixture(d: Path) -> tuple[list[Comparison], str | None]:
    """Compare one fixture folder. Returns (comparisons, skip reason or None)."""
    cfg = json.loads((d / "config.json").read_text())
    meta_path = d / "fixture_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    kind = fixture_kind(cfg)
    if kind not in RUNNERS:
        return [Comparison(d.name, "config.json", False, None, "unrecognised fixture kind")], None
    expected = load_file(str(d / "expected.safetensors"))
    if (d / RNG_FILE).exists():
        expected.update({f"torch_rng/{k}": v for k, v in load_file(str(d / RNG_FILE)).items()})
    inter_path = d / "intermediates.safetensors"
    expected_inter = load_file(str(inter_path)) if inter_path.exists() else {}
    torch.manual_seed(0)
    try:
        out, inter = RUNNERS[kind](d, cfg, meta, set(expected_inter))
    except Exception as e:  # a broken fixture or model is a failure line, not a traceback
        return [Comparison(d.name, "(run)", False, None, f"{type(e).__name__}: {e}")], None
    results = [compare(d.name, k, out.get(k), v) for k, v in expected.items()]
    results += [compare(d.name, f"intermediates/{k}", inter.get(k), v) for k, v in expected_inter.items()]
    return results, None


def fixture_dirs(root: Path) -> list[Path]:
    if (root / "config.json").exists():
        return [root]
    dirs = sorted(p for p in root.iterdir() if (p / "config.json").exists())
    if not dirs:
        raise FileNotFoundError(f"{root} holds no fixture folders (folders with config.json)")
    return dirs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m titok_core.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, help="fixture set(s) or fixture folder(s)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures and the summary only")
    args = ap.parse_args(argv)
    failed = passed = skipped = 0
    for root in args.dirs:
        try:
            dirs = fixture_dirs(root)
        except (FileNotFoundError, NotADirectoryError) as e:
            print(f"FAIL  {root}: {e}")
            failed += 1
            continue
        for d in dirs:
            results, skip = check_fixture(d)
            if skip:
                skipped += 1
                print(f"SKIP  {d.name}: {skip}")
            for r in results:
                passed += r.ok
                failed += not r.ok
                if not (args.quiet and r.ok):
                    print(r.line())
    print(f"conformance: {passed} passed, {failed} failed, {skipped} fixtures skipped")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
