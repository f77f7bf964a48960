"""Official models by their Hugging Face Hub names.

- titok_core reads a directory in the official Hub layout (model.safetensors under the official names +
  the official nested config.json): the conformance fixtures written that way give the official outputs,
  a small model gives exactly what its official `.bin` gives, the released configs give the presets.
- pipelines.storage resolves `hf://` names through huggingface_hub's cache: a pre-filled cache works
  with HF_HUB_OFFLINE=1 and with the Hub unreachable; a miss is one line naming the model, the cache
  and the command that pre-fills it.
- README.md's model table names every official release with its parameter count.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import hf_cache
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.storage import HubName, fetch_to_cache
from titok_core import (
    GENERATOR_HUB_MODELS,
    GENERATOR_PRESETS,
    HUB_MODELS,
    PRESETS,
    VQGAN_PRESETS,
    BertGenerator,
    BertGeneratorConfig,
    MaskGITVQGAN,
    TiTok,
    TiTokReleased,
    UViTGenerator,
    UViTGeneratorConfig,
    build_generator,
    load_model,
)
from titok_core.checkpoints import (
    CheckpointMismatchError,
    generator_ours_to_official,
    model_from_official,
    ours_to_official,
)
from titok_core.presets import TiTokConfig

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance"
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------------
# Writing models the way the official code publishes them.


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under the official names (what the official module's state_dict() holds)."""
    if isinstance(model, (BertGenerator, UViTGenerator)):
        sd = generator_ours_to_official(model)
    elif isinstance(model, MaskGITVQGAN):
        sd = model.state_dict()
    else:
        released = isinstance(model, TiTokReleased)
        sd = {ours_to_official(k, released): v for k, v in model.state_dict().items()}
    return {k: v.detach().clone() for k, v in sd.items()}  # clone: the split q/k/v share storage


def write_hub_dir(directory: Path, model: torch.nn.Module, config: dict) -> Path:
    """A directory as in a Hub repository of the official models: model.safetensors + config.json."""
    directory.mkdir(parents=True)
    save_file(official_state_dict(model), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    return directory


def write_bin(path: Path, model: torch.nn.Module) -> Path:
    torch.save(official_state_dict(model), path)
    return path


def official_config(vq_model: dict, crop_size: int, generator: dict | None = None, **extra) -> dict:
    """config.json as the official `_save_pretrained` writes it: the whole OmegaConf config of the
    official `configs/infer/*.yaml` (experiment, model.vq_model [+ model.generator], dataset), with
    its `${...}` references left unresolved."""
    model = {"vq_model": vq_model, **({"generator": generator} if generator else {})}
    return {"experiment": {"output_dir": "titok"}, "model": model,
            "dataset": {"preprocessing": {"crop_size": crop_size}}, **extra}


def generator_section(model_type: str, width: int, depth: int, heads: int, mlp: int, classes: int) -> dict:
    return {"model_type": model_type, "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "intermediate_size": mlp, "dropout": 0.1, "attn_drop": 0.1, "num_steps": 8, "class_label_dropout": 0.1,
            "image_seq_len": "${model.vq_model.num_latent_tokens}", "condition_num_classes": classes}


# The official configs of the releases (1d-tokenizer configs/infer/TiTok/titok_{l32,b64,s128}.yaml).
RELEASES = {
    "L-32": ("large", 32, generator_section("ViT", 768, 24, 16, 3072, 1000)),
    "B-64": ("base", 64, generator_section("ViT", 768, 24, 16, 3072, 1000)),
    "S-128": ("small", 128, generator_section("UViT", 1024, 20, 16, 4096, 1000)),
}


def release_config(preset: str) -> dict:
    size, tokens, generator = RELEASES[preset]
    vq = {"codebook_size": 4096, "token_size": 12, "use_l2_norm": True, "commitment_cost": 0.25,
          "vit_enc_model_size": size, "vit_dec_model_size": size, "vit_enc_patch_size": 16, "vit_dec_patch_size": 16,
          "num_latent_tokens": tokens, "finetune_decoder": True}
    return official_config(vq, 256, generator)


# Small models the official `.bin` path can load too (official widths give it the head counts).
SMALL_SIZE = {"small-1layer": {"width": 512, "num_layers": 1, "num_heads": 8}}
SMALL_TITOK = TiTokConfig(image_size=64, enc_width=512, enc_layers=1, enc_heads=8, dec_width=512, dec_layers=1,
                          dec_heads=8, num_latent_tokens=8, codebook_size=32, pixel_vqgan=VQGAN_PRESETS["debug"])


def small_titok_config(finetune_decoder: bool = True) -> dict:
    vq = {"codebook_size": 32, "token_size": 12, "use_l2_norm": True, "commitment_cost": 0.25,
          "vit_enc_model_size": "small-1layer", "vit_dec_model_size": "small-1layer", "vit_enc_patch_size": 16,
          "vit_dec_patch_size": 16, "num_latent_tokens": 8, "finetune_decoder": finetune_decoder}
    return official_config(vq, 64, extra_size_map=SMALL_SIZE)


SMALL_GENERATORS = {
    "bert": (BertGeneratorConfig(codebook_size=64, num_latent_tokens=8, num_classes=10, width=768, depth=1,
                                 num_heads=16, mlp_dim=256), generator_section("ViT", 768, 1, 16, 256, 10)),
    "uvit": (UViTGeneratorConfig(codebook_size=64, num_latent_tokens=8, num_classes=10, width=768, depth=2,
                                 num_heads=16, mlp_dim=256), generator_section("UViT", 768, 2, 16, 256, 10)),
}
TEACHER_CONFIG = {  # the conformance fixtures' teacher config structure, for VQGAN_PRESETS["debug"]
    "vqgan_conf": {"channel_mult": [1, 1, 2, 2, 2], "num_resolutions": 5, "dropout": 0.0, "hidden_channels": 32,
                   "num_channels": 3, "num_res_blocks": 1, "resolution": 256, "z_channels": 32},
    "quantizer": {"num_embeddings": 1024, "embedding_dim": 32, "commitment_cost": 0.25},
}


def small_model(kind: str) -> tuple[torch.nn.Module, dict]:
    """(random model, its official config.json) for kind in titok, titok_released, bert, uvit, teacher."""
    torch.manual_seed(0)
    if kind == "titok":
        return TiTok(SMALL_TITOK).eval(), small_titok_config(finetune_decoder=False)
    if kind == "titok_released":
        return TiTokReleased(SMALL_TITOK).eval(), small_titok_config()
    if kind == "teacher":
        return MaskGITVQGAN(VQGAN_PRESETS["debug"]).eval(), TEACHER_CONFIG
    cfg, section = SMALL_GENERATORS[kind]
    vq = {"codebook_size": cfg.codebook_size, "num_latent_tokens": cfg.num_latent_tokens}
    return build_generator(cfg).eval(), official_config(vq, 256, section)


def outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a user computes with the model, on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if isinstance(model, (BertGenerator, UViTGenerator)):
            cfg = model.config
            ids = torch.randint(0, cfg.codebook_size + 1, (2, cfg.num_latent_tokens), generator=g)
            return {"logits": model(ids, torch.tensor([3, 7]), cond_drop_prob=0.0)}
        x = torch.rand(2, 3, 64, 64, generator=g)
        if isinstance(model, MaskGITVQGAN):
            codes = model.encode(x)
            return {"codes": codes, "decoded": model.decode(codes)}
        tokens = model.encode(x)
        return {"tokens": tokens, "decoded": model.decode_tokens(tokens)}


# ---------------------------------------------------------------------------------------------------
# titok_core: the Hub layout.

FIXTURES = ["titok_tiny_stage1", "titok_tiny_stage2", "maskgit_generator_tiny", "uvit_generator_tiny",
            "maskgit_vqgan_tiny"]


@pytest.mark.parametrize("name", FIXTURES)
def test_conformance_fixture_in_the_hub_layout_computes_the_official_outputs(tmp_path: Path, name: str) -> None:
    """A fixture's official config.json and weights, laid out as a Hub repository, load by path alone and
    reproduce the official implementation's outputs (ints exactly, floats within the fixtures' tolerance)."""
    src = CONFORMANCE / "public" / name
    config = json.loads((src / "config.json").read_text())
    meta = json.loads((src / "fixture_meta.json").read_text())
    if "extra_size_map" in meta:  # the fixtures' tiny ViT sizes, which the official size table lacks
        config["extra_size_map"] = meta["extra_size_map"]
    hub = tmp_path / name
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps(config))
    shutil.copy(src / "weights.safetensors", hub / "model.safetensors")
    model = load_model(hub)
    inputs, expected = load_file(str(src / "inputs.safetensors")), load_file(str(src / "expected.safetensors"))
    close = dict(atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        if name.startswith("titok"):
            assert type(model) is (TiTokReleased if name.endswith("stage2") else TiTok)
            tokens = expected["min_encoding_indices"].flatten(1)
            assert torch.equal(model.encode(inputs["pixel_values"]), tokens)
            torch.testing.assert_close(model.decode_tokens(tokens), expected["decode_tokens"], **close)
        elif "generator" in name:
            assert type(model) is (UViTGenerator if name.startswith("uvit") else BertGenerator)
            logits = model(inputs["input_ids"], inputs["condition"], cond_drop_prob=0.0)
            torch.testing.assert_close(logits, expected["logits_cond"], **close)
        else:
            assert type(model) is MaskGITVQGAN
            assert torch.equal(model.encode(inputs["pixel_values"]), expected["codebook_indices"])
            torch.testing.assert_close(model.decode(expected["codebook_indices"]), expected["decoded_clamped"], **close)


@pytest.mark.parametrize("kind", ["titok", "titok_released", "bert", "uvit", "teacher"])
def test_hub_directory_loads_what_the_official_bin_of_the_same_weights_loads(tmp_path: Path, kind: str) -> None:
    model, config = small_model(kind)
    from_bin = load_model(write_bin(tmp_path / "official.bin", model))
    from_hub = load_model(write_hub_dir(tmp_path / "hub", model, config))
    assert type(from_hub) is type(from_bin) is type(model)
    assert from_hub.config == from_bin.config
    for (k, a), (k2, b) in zip(from_hub.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    hub_out, bin_out = outputs(from_hub), outputs(from_bin)
    for key in bin_out:
        assert torch.equal(hub_out[key], bin_out[key]), key
    # model.safetensors names the directory too, as for our format
    assert type(load_model(tmp_path / "hub" / "model.safetensors")) is type(model)


@pytest.mark.parametrize("preset", sorted(RELEASES))
def test_release_configs_describe_the_presets(preset: str) -> None:
    """The config.json of each released tokenizer and generator, with the released state dict's names and
    shapes (the conformance manifests; no weights), gives exactly our preset."""
    def manifest_tensors(name: str) -> dict[str, torch.Tensor]:
        m = json.loads((CONFORMANCE / "manifests" / f"{name}.json").read_text())
        return {k: torch.empty(v["shape"], device="meta") for k, v in m["state_dict"].items()}

    suffix = preset.replace("-", "").lower()  # L-32 -> l32
    config = release_config(preset)
    tokenizer = model_from_official(manifest_tensors(f"titok_{suffix}_stage2_released"), "hub", config=config)
    assert type(tokenizer) is TiTokReleased and tokenizer.config == PRESETS[preset]
    generator = model_from_official(manifest_tensors(f"generator_titok_{suffix}"), "hub", config=config)
    assert generator.config == GENERATOR_PRESETS[preset]


def _edit(config: dict, path: str, value) -> dict:
    config = json.loads(json.dumps(config))
    *parents, last = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return config


@pytest.mark.parametrize("kind,path,value,message", [
    ("titok_released", "model.vq_model.vit_enc_model_size", "large",
     r"does not describe model.safetensors \(config != tensors\): enc_width 1024 != 512; enc_layers 24 != 1"),
    ("titok_released", "model.vq_model.finetune_decoder", False,
     r"says finetune_decoder=false \(the stage-1 form\) but model.safetensors holds a pixel decoder"),
    ("titok", "model.vq_model.finetune_decoder", None,  # absent: the official default, the released form
     r"says finetune_decoder=true \(the released form\) but model.safetensors holds no pixel_decoder"),
    ("titok_released", "model.vq_model.vit_dec_model_size", "tiny", r"unknown ViT size 'tiny'"),
    ("titok_released", "model.vq_model.quantize_mode", "vae", r"quantize_mode 'vae' is not supported"),
    ("titok_released", "dataset", None, r"config.json has no 'dataset' entry"),
    ("bert", "model.generator.model_type", "UViT", r"architecture uvit != bert"),
    ("bert", "model.generator.image_seq_len", "${model.vq_model.nothing}",
     r"\$\{model.vq_model.nothing\} names no value"),
    ("uvit", "model.generator.intermediate_size", 512, r"mlp_dim 512 != 256"),
    ("teacher", "vqgan_conf.hidden_channels", 64, r"channels \(64, 64, 128, 128, 128\) != \(32, 32, 64, 64, 64\)"),
])
def test_hub_config_that_does_not_fit_is_one_line(tmp_path: Path, kind: str, path: str, value, message: str) -> None:
    model, config = small_model(kind)
    hub = write_hub_dir(tmp_path / "hub", model, _edit(config, path, value))
    with pytest.raises(CheckpointMismatchError, match=message) as e:
        load_model(hub)
    assert "\n" not in str(e.value) and str(hub) in str(e.value)


def test_hub_directory_without_weights_is_one_line(tmp_path: Path) -> None:
    hub = write_hub_dir(tmp_path / "hub", *small_model("titok_released"))
    (hub / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"hub has no model.safetensors \(expected model.safetensors"):
        load_model(hub)


# ---------------------------------------------------------------------------------------------------
# pipelines.storage: hf:// names and the Hugging Face cache.


def test_hub_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert HubName.parse(HUB_MODELS["L-32"]) == HubName("yucornetto/tokenizer_titok_l32_imagenet")
    assert HubName.parse(HUB_MODELS["maskgit-vqgan"]) == HubName("fun-research/TiTok", None,
                                                                  "maskgit-vqgan-imagenet-f16-256.bin")
    assert HubName.parse("hf://owner/name@v1.0") == HubName("owner/name", "v1.0")
    assert HubName.parse("hf://owner/name@refs%2Fpr%2F3/sub/model.bin") == HubName("owner/name", "refs/pr/3",
                                                                                     "sub/model.bin")
    assert all(HubName.parse(n).filename is None for n in GENERATOR_HUB_MODELS.values())
    for bad in ("hf://name-only", "hf://", "hf:///name"):
        with pytest.raises(ValueError, match="is not a Hugging Face Hub name: write hf://owner/name"):
            fetch_to_cache(bad)
    # A bare repo id is a relative path (it may name a local directory); a missing one says how to name the Hub.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="for the Hugging Face model yucornetto/tokenizer_titok_l32_imagenet "
                                                "write hf://yucornetto/tokenizer_titok_l32_imagenet$"):
        fetch_to_cache("yucornetto/tokenizer_titok_l32_imagenet", option="--tokenizer")
    local = tmp_path / "yucornetto" / "tokenizer_titok_l32_imagenet"
    local.mkdir(parents=True)
    assert fetch_to_cache("yucornetto/tokenizer_titok_l32_imagenet") == str(local)


# Loads each URI through pipelines.runtime.load_model_uri in a fresh process (huggingface_hub reads HF_HOME,
# HF_HUB_OFFLINE and HF_ENDPOINT at import) and writes what came back: kind, path, config, weights.
LOADER = """
import json, sys
from safetensors.torch import save_file
from pipelines.runtime import load_model_uri
out = {}
for i, uri in enumerate(sys.argv[2:]):
    try:
        path, model = load_model_uri(uri, option="--model", what="model weights")
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        out[uri] = {"error": str(e)}
        continue
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{sys.argv[1]}/{i}.safetensors")
    out[uri] = {"kind": type(model).__name__, "path": path, "config": model.config.to_dict(), "weights": i}
json.dump(out, open(f"{sys.argv[1]}/result.json", "w"))
"""


def hf_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"}
    return {**env, "HF_HOME": str(home), "PYTHONPATH": str(REPO), **extra}


def load_in_fresh_process(tmp_path: Path, env: dict[str, str], uris: list[str]) -> dict[str, dict]:
    out = tmp_path / f"loaded-{len(list(tmp_path.glob('loaded-*')))}"
    out.mkdir()
    subprocess.run([sys.executable, "-c", LOADER, str(out), *uris], env=env, cwd=REPO, check=True, timeout=300)
    result = json.loads((out / "result.json").read_text())
    for r in result.values():
        if "weights" in r:
            r["weights"] = load_file(str(out / f"{r['weights']}.safetensors"))
    return result


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def filled_cache(tmp_path: Path) -> tuple[Path, dict[str, torch.nn.Module], dict[str, str]]:
    """HF_HOME whose cache holds small stand-ins under the official names, as `hf download` leaves them:
    the L-32 tokenizer and generator repositories and the teacher file of fun-research/TiTok."""
    home = tmp_path / "hf"
    models, commits = {}, {}
    for uri, kind in ((HUB_MODELS["L-32"], "titok_released"), (GENERATOR_HUB_MODELS["L-32"], "bert")):
        model, config = small_model(kind)
        hub = write_hub_dir(tmp_path / kind, model, config)
        commits[uri] = hf_cache.fill(home / "hub", HubName.parse(uri).repo_id,
                                     {f.name: f for f in hub.iterdir()})
        models[uri] = model
    teacher = HubName.parse(HUB_MODELS["maskgit-vqgan"])
    models[HUB_MODELS["maskgit-vqgan"]] = small_model("teacher")[0]
    commits[HUB_MODELS["maskgit-vqgan"]] = hf_cache.fill(
        home / "hub", teacher.repo_id, {teacher.filename: write_bin(tmp_path / "teacher.bin", small_model("teacher")[0])})
    return home, models, commits


def test_filled_cache_is_a_cache_huggingface_hub_recognises(filled_cache) -> None:
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    home, models, commits = filled_cache
    info = scan_cache_dir(home / "hub")
    assert not info.warnings
    assert {r.repo_id for r in info.repos} == {HubName.parse(u).repo_id for u in models}
    tokenizer = HubName.parse(HUB_MODELS["L-32"]).repo_id
    cached = try_to_load_from_cache(tokenizer, "model.safetensors", cache_dir=home / "hub")
    assert cached == str(home / "hub" / f"models--{tokenizer.replace('/', '--')}" / "snapshots" /
                         commits[HUB_MODELS["L-32"]] / "model.safetensors")


def test_prefilled_cache_loads_with_hf_hub_offline(tmp_path: Path, filled_cache) -> None:
    home, models, commits = filled_cache
    tokenizer = HUB_MODELS["L-32"]
    uris = [tokenizer, f"{tokenizer}@main", f"{tokenizer}@{commits[tokenizer]}", GENERATOR_HUB_MODELS["L-32"],
            HUB_MODELS["maskgit-vqgan"], f"{tokenizer}@v2", "hf://fun-research/TiTok"]
    result = load_in_fresh_process(tmp_path, hf_env(home, HF_HUB_OFFLINE="1"), uris)
    for uri in uris[:-2]:
        model = models[uri.split("@")[0]]
        r = result[uri]
        assert "error" not in r, r
        assert r["kind"] == type(model).__name__ and r["config"] == json.loads(json.dumps(model.config.to_dict()))
        assert r["path"].startswith(str(home / "hub" / "models--"))
        assert all(torch.equal(r["weights"][k], v) for k, v in model.state_dict().items())
    assert result[tokenizer]["path"].endswith(f"/snapshots/{commits[tokenizer]}")
    assert result[HUB_MODELS["maskgit-vqgan"]]["path"].endswith("/maskgit-vqgan-imagenet-f16-256.bin")
    # a revision the cache does not hold: one line, not a download
    error = result[f"{tokenizer}@v2"]["error"]
    assert "\n" not in error and "is not in the Hugging Face cache" in error and "--revision v2" in error
    # a repository of loose files (the teacher's) is not a model: name one of its files
    error = result["hf://fun-research/TiTok"]["error"]
    assert error.endswith("has no config.json or model.safetensors (a Hub-layout model repository holds "
                          "config.json + model.safetensors); to load one file of the repository, name it: "
                          "hf://fun-research/TiTok/<file>"), error


def test_unreachable_hub_falls_back_to_the_cache_and_explains_a_miss(tmp_path: Path, filled_cache) -> None:
    home, models, _ = filled_cache
    uncached = "hf://yucornetto/tokenizer_titok_s128_imagenet"
    env = hf_env(home, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")  # online, but the Hub does not answer
    result = load_in_fresh_process(tmp_path, env, [HUB_MODELS["L-32"], HUB_MODELS["maskgit-vqgan"], uncached])
    assert result[HUB_MODELS["L-32"]]["kind"] == "TiTokReleased"
    assert result[HUB_MODELS["maskgit-vqgan"]]["kind"] == "MaskGITVQGAN"
    error = result[uncached]["error"]
    assert "\n" not in error and re.search(r"is not in the Hugging Face cache \S+ \(\w*Connect\w*Error", error), error


def test_hf_settings_are_read_when_a_model_is_fetched(tmp_path: Path, filled_cache,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HOME / HF_HUB_OFFLINE set after huggingface_hub was imported (a notebook, a test) still count."""
    import huggingface_hub  # noqa: F401  (imported before the settings change)
    home, models, _ = filled_cache
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = fetch_to_cache(HUB_MODELS["L-32"], what="tokenizer", option="--tokenizer")
    assert path.startswith(str(home / "hub"))
    assert load_model(path).config == models[HUB_MODELS["L-32"]].config
    monkeypatch.setenv("HF_HOME", str(tmp_path / "other-hf"))
    with pytest.raises(RuntimeError, match=f"not in the Hugging Face cache {tmp_path / 'other-hf' / 'hub'} "
                                           r"\(HF_HUB_OFFLINE is set\)"):
        fetch_to_cache(HUB_MODELS["L-32"], what="tokenizer", option="--tokenizer")


def test_offline_miss_is_one_line_naming_model_cache_and_how_to_prefill(tmp_path: Path, filled_cache) -> None:
    """tokenize_dataset.py with its default tokenizer, offline, on an empty cache: exit 2 and one line;
    the command it names, run as given, fills the cache (here from the filled one, offline)."""
    empty = tmp_path / "empty-hf"
    job = subprocess.run([sys.executable, "jobs/tokenize_dataset.py", "--input", str(tmp_path / "none"),
                          "--output", str(tmp_path / "out")], env=hf_env(empty, HF_HUB_OFFLINE="1"), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 2, job.stderr
    (line,) = job.stderr.strip().splitlines()
    assert line.startswith(f"error: --tokenizer: tokenizer weights {HUB_MODELS['L-32']} is not in the Hugging Face "
                           f"cache {empty / 'hub'} (HF_HUB_OFFLINE is set); pre-fill")
    (command,) = re.findall(r"`([^`]+)`", line)
    assert command == "hf download yucornetto/tokenizer_titok_l32_imagenet config.json model.safetensors"
    home, _, commits = filled_cache
    run = subprocess.run([str(VENV_BIN / "hf"), *shlex.split(command)[1:]], env=hf_env(home, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].endswith(f"snapshots/{commits[HUB_MODELS['L-32']]}")


# ---------------------------------------------------------------------------------------------------
# README.md: the model table.


def test_readme_model_table_names_every_release_with_its_parameter_count() -> None:
    manifests = {HUB_MODELS["maskgit-vqgan"]: "maskgit_vqgan_imagenet_f16_256"}
    for preset in ("L-32", "B-64", "S-128"):
        suffix = preset.replace("-", "").lower()
        manifests[HUB_MODELS[preset]] = f"titok_{suffix}_stage2_released"
        manifests[GENERATOR_HUB_MODELS[preset]] = f"generator_titok_{suffix}"
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("|") and (names := re.findall(r"`(hf://[^`]+)`", line)):
            (params,) = re.findall(r"\| ([\d.]+) M \|", line)
            rows[names[0]] = float(params)
    assert set(rows) == set(manifests), "README's model table and titok_core's Hub names differ"
    for name, manifest in manifests.items():
        total = json.loads((CONFORMANCE / "manifests" / f"{manifest}.json").read_text())["total_parameters"]
        assert rows[name] == round(total / 1e6, 1), name
