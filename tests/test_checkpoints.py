"""Official checkpoints: names and shapes of every release; our safetensors format round-trips."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from titok_core import PRESETS, VQGAN_PRESETS, MaskGITVQGAN, TiTok, TiTokReleased, load_model, save_pretrained
from titok_core.checkpoints import (
    CheckpointMismatchError,
    infer_titok_config,
    infer_vqgan_config,
    official_to_ours,
    ours_to_official,
)
from titok_core.presets import TiTokConfig, VQGANConfig

MANIFESTS = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "manifests"

# manifest -> (our model class, preset)
OFFICIAL = {
    "maskgit_vqgan_imagenet_f16_256": (MaskGITVQGAN, "f16-256"),
    "titok_l32_stage1": (TiTok, "L-32"),
    "titok_b64_stage1": (TiTok, "B-64"),
    "titok_s128_stage1": (TiTok, "S-128"),
    "titok_l32_stage2_released": (TiTokReleased, "L-32"),
    "titok_b64_stage2_released": (TiTokReleased, "B-64"),
    "titok_s128_stage2_released": (TiTokReleased, "S-128"),
}


def _build(cls, preset):
    cfg = VQGAN_PRESETS[preset] if cls is MaskGITVQGAN else PRESETS[preset]
    with torch.device("meta"):  # no 600M-parameter allocation
        return cls(cfg)


def _official_shapes(model) -> dict[str, list[int]]:
    released = isinstance(model, TiTokReleased)
    return {ours_to_official(k, released): list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("manifest", sorted(OFFICIAL))
def test_preset_has_exactly_the_official_keys_and_shapes(manifest):
    m = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    model = _build(*OFFICIAL[manifest])
    ours = _official_shapes(model)
    theirs = {k: v["shape"] for k, v in m["state_dict"].items()}
    assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert wrong == {}
    assert sum(p.numel() for p in model.parameters()) == m["total_parameters"]


def test_every_official_manifest_is_covered():
    names = {p.stem for p in MANIFESTS.glob("*.json")} - {"summary"}
    assert {n for n in names if not n.startswith("generator_")} == set(OFFICIAL)


@pytest.mark.parametrize("manifest", sorted(OFFICIAL))
def test_architecture_is_inferred_from_official_shapes(manifest):
    """Loading an official .bin needs no preset: its shapes determine the model."""
    m = json.loads((MANIFESTS / f"{manifest}.json").read_text())
    sd = {k: torch.empty(v["shape"], device="meta") for k, v in m["state_dict"].items()}
    cls, preset = OFFICIAL[manifest]
    if cls is MaskGITVQGAN:
        assert infer_vqgan_config(sd) == VQGAN_PRESETS[preset]
    else:
        assert infer_titok_config(sd) == PRESETS[preset]


def test_name_mapping_is_invertible():
    for cls, preset in [(TiTok, "debug"), (TiTokReleased, "debug")]:
        model = cls(PRESETS[preset])
        released = cls is TiTokReleased
        for k in model.state_dict():
            assert official_to_ours(ours_to_official(k, released), released) == k


# Official files carry no config: widths must be official ones (the head count comes from the size table).
SMALL_OFFICIAL = TiTokConfig(
    image_size=64, enc_width=512, enc_layers=1, enc_heads=8, dec_width=512, dec_layers=1, dec_heads=8,
    num_latent_tokens=8, codebook_size=32, pixel_vqgan=VQGAN_PRESETS["debug"])


def _official_file(model, path: Path) -> Path:
    released = isinstance(model, TiTokReleased)
    torch.save({ours_to_official(k, released): v for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("cls", [MaskGITVQGAN, TiTok, TiTokReleased])
def test_official_bin_loads_without_a_preset(tmp_path, cls):
    torch.manual_seed(0)
    cfg = VQGAN_PRESETS["debug"] if cls is MaskGITVQGAN else SMALL_OFFICIAL
    model = cls(cfg).eval()
    loaded = load_model(_official_file(model, tmp_path / "official.bin"))
    # a stage-1 file has no pixel decoder, so it cannot say which one the model would get
    expect = dataclasses.replace(cfg, pixel_vqgan=VQGANConfig()) if cls is TiTok else cfg
    assert type(loaded) is cls and loaded.config == expect
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        if cls is MaskGITVQGAN:
            assert torch.equal(loaded.encode(x), model.encode(x))
        else:
            assert torch.equal(loaded.encode(x), model.encode(x))
            tokens = model.encode(x)
            assert torch.equal(loaded.decode_tokens(tokens), model.decode_tokens(tokens))


@pytest.mark.parametrize("cls", [MaskGITVQGAN, TiTok, TiTokReleased])
def test_our_format_round_trips(tmp_path, cls):
    torch.manual_seed(1)
    cfg = VQGAN_PRESETS["debug"] if cls is MaskGITVQGAN else PRESETS["debug"]
    model = cls(cfg).eval()
    out = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(out)  # no preset given
    assert type(loaded) is cls and loaded.config == cfg
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert load_model(out / "model.safetensors").config == cfg


def test_wrong_file_gets_one_line_listing_the_keys(tmp_path):
    model = TiTok(SMALL_OFFICIAL)
    sd = {ours_to_official(k, False): v for k, v in model.state_dict().items()}
    sd.pop("decoder.ln_post.bias")
    sd["encoder.bogus"] = torch.zeros(1)
    sd["decoder.mask_token"] = torch.zeros(1, 1, 7)
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(CheckpointMismatchError) as e:
        load_model(tmp_path / "bad.bin")
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing 1: decoder.ln_post.bias" in msg
    assert "unexpected 1: encoder.bogus" in msg
    assert "mis-shaped 1: decoder.mask_token (1, 1, 7) != (1, 1, 512)" in msg


def test_our_format_with_wrong_config_is_refused(tmp_path):
    out = save_pretrained(TiTok(PRESETS["debug"]), tmp_path / "ckpt")
    meta = json.loads((out / "config.json").read_text())
    meta["config"]["num_latent_tokens"] = 16
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        load_model(out)


class Boom:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickles_with_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    torch.save({"x": Boom()}, path)
    with pytest.raises(CheckpointMismatchError, match="not a plain state-dict file"):
        load_model(path)
    assert "code ran" not in capsys.readouterr().out


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"hello")
    with pytest.raises(CheckpointMismatchError):
        load_model(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.bin")
