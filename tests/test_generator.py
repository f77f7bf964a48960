"""The masked-token generators: official numbers and files, our format, sampling, training pieces."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from titok_core import (
    GENERATOR_PRESETS,
    PRESETS,
    SAMPLING_PRESETS,
    BertGeneratorConfig,
    SamplingConfig,
    UViTGeneratorConfig,
    build_generator,
    conformance,
    generate,
    get_generator_preset,
    load_model,
    mask_tokens,
    masked_token_loss,
    save_pretrained,
)
from titok_core.checkpoints import CheckpointMismatchError, generator_ours_to_official, infer_generator_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"
PUBLIC = SHARED / "public"
GENERATOR_FIXTURES = ["maskgit_generator_tiny", "uvit_generator_tiny"]

# Small sizes of both kinds, off the official ones (odd widths, head counts, token counts).
SMALL = {
    "bert": BertGeneratorConfig(codebook_size=50, num_latent_tokens=5, num_classes=7, width=48, depth=3,
                                num_heads=3, mlp_dim=100, dropout=0.0, attn_dropout=0.0),
    "uvit": UViTGeneratorConfig(codebook_size=50, num_latent_tokens=12, num_classes=7, width=48, depth=4,
                                num_heads=6, mlp_dim=72),
    "uvit_mid_only": UViTGeneratorConfig(codebook_size=20, num_latent_tokens=3, num_classes=2, width=16, depth=1,
                                         num_heads=2, mlp_dim=32),
}


def _small(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_generator(SMALL[name]).eval()


def _inputs(cfg, b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.codebook_size + 1, (b, cfg.num_latent_tokens), generator=g)  # K = [MASK] included
    return ids, torch.randint(0, cfg.num_classes, (b,), generator=g)


# --------------------------------------------------------------------------------------------
# Conformance with the official implementation.
@pytest.mark.parametrize("name", GENERATOR_FIXTURES)
def test_public_generator_fixture_matches_reference(name):
    results, skip = conformance.check_fixture(PUBLIC / name)
    assert skip is None
    expected = set(load_file(str(PUBLIC / name / "expected.safetensors")))
    expected |= {f"torch_rng/{k}" for k in load_file(str(PUBLIC / name / "expected_torch_rng.safetensors"))}
    assert expected <= {r.key for r in results}, "every expected tensor, seeded ones included, is compared"
    failures = [r.line() for r in results if not r.ok]
    assert not failures, "\n".join(failures)


def test_fixture_without_the_optional_rng_file_passes(tmp_path, capsys):
    d = tmp_path / "set" / "uvit_generator_tiny"
    shutil.copytree(PUBLIC / "uvit_generator_tiny", d)
    (d / "expected_torch_rng.safetensors").unlink()
    assert conformance.main([str(d)]) == 0
    out = capsys.readouterr().out
    assert "torch_rng" not in out and "PASS  uvit_generator_tiny/generate/linear_g4.5/ids" in out


def test_a_wrong_seeded_sample_fails(tmp_path, capsys):
    d = tmp_path / "set" / "maskgit_generator_tiny"
    shutil.copytree(PUBLIC / "maskgit_generator_tiny", d)
    rng = load_file(str(d / "expected_torch_rng.safetensors"))
    ids = rng["generate_linear_g3.0_t4.5_ids"].clone()
    ids[1, 3] = (ids[1, 3] + 1) % 64
    rng["generate_linear_g3.0_t4.5_ids"] = ids
    save_file(rng, str(d / "expected_torch_rng.safetensors"), metadata={"generate_seed": "200", "masking_seed": "300"})
    assert conformance.main([str(d)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  maskgit_generator_tiny/torch_rng/generate_linear_g3.0_t4.5_ids  max_abs=1" in out
    assert "PASS  maskgit_generator_tiny/torch_rng/masking_input_tokens/masks" in out


# --------------------------------------------------------------------------------------------
# The official models: names, shapes, sizes.
OFFICIAL = {"generator_titok_l32": "L-32", "generator_titok_b64": "B-64", "generator_titok_s128": "S-128"}


@pytest.mark.parametrize("manifest", sorted(OFFICIAL))
def test_preset_has_exactly_the_official_keys_and_shapes(manifest):
    m = json.loads((SHARED / "manifests" / f"{manifest}.json").read_text())
    with torch.device("meta"):
        model = build_generator(GENERATOR_PRESETS[OFFICIAL[manifest]])
    ours = {k: list(v.shape) for k, v in generator_ours_to_official(model).items()}
    theirs = {k: v["shape"] for k, v in m["state_dict"].items()}
    assert list(ours) == list(theirs)  # same keys, in the official order
    assert {k: v for k, v in ours.items() if v != theirs[k]} == {}
    assert sum(p.numel() for p in model.parameters()) == m["total_parameters"]
    # and loading the official file needs no preset: the shapes give the same config
    assert infer_generator_config({k: torch.empty(s, device="meta") for k, s in theirs.items()}) == model.config


def test_every_generator_manifest_is_covered():
    assert {p.stem for p in (SHARED / "manifests").glob("generator_*.json")} == set(OFFICIAL)


def test_presets():
    sizes = {n: (type(c).__name__, c.num_latent_tokens, c.codebook_size, c.num_classes, c.width, c.depth)
             for n, c in GENERATOR_PRESETS.items()}
    assert sizes == {
        "L-32": ("BertGeneratorConfig", 32, 4096, 1000, 768, 24),
        "B-64": ("BertGeneratorConfig", 64, 4096, 1000, 768, 24),
        "S-128": ("UViTGeneratorConfig", 128, 4096, 1000, 1024, 20),
        "debug": ("BertGeneratorConfig", 32, 256, 1000, 64, 2),
    }
    # each generator reads its tokenizer's tokens
    for name, cfg in GENERATOR_PRESETS.items():
        assert (cfg.num_latent_tokens, cfg.codebook_size) == (PRESETS[name].num_latent_tokens, PRESETS[name].codebook_size)
    with pytest.raises(ValueError, match="unknown generator preset 'XL'"):
        get_generator_preset("XL")
    assert {n: dataclasses.astuple(c) for n, c in SAMPLING_PRESETS.items()} == {
        "L-32": (8, 4.5, "linear", 3.0, 9.5, True),
        "B-64": (8, 3.0, "linear", 3.0, 11.0, True),
        "S-128": (64, 6.9, "power-cosine", 3.0, 2.8, True),
    }


def test_bad_configs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="width 100 is not divisible by num_heads 16"):
        BertGeneratorConfig(width=100)
    with pytest.raises(ValueError, match="unknown guidance_decay 'cosine'"):
        SamplingConfig(guidance_decay="cosine")
    with pytest.raises(ValueError, match="unknown BertGeneratorConfig keys"):
        BertGeneratorConfig.from_dict({"width": 64, "heads": 4})


# --------------------------------------------------------------------------------------------
# Any size works.
@pytest.mark.parametrize("name", sorted(SMALL))
def test_other_sizes_forward_backward_and_sample(name):
    model = _small(name).train()
    cfg = model.config
    ids, labels = _inputs(cfg)
    logits = model(ids, labels)
    assert logits.shape == (3, cfg.num_latent_tokens, cfg.codebook_size)
    logits.square().mean().backward()
    no_grad = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad  # every block, the U-ViT's skips included, is on the path
    out = generate(model, labels, SamplingConfig(num_sample_steps=4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, cfg.num_latent_tokens) and out.dtype == torch.int64
    assert model.training, "generate restores the model's mode"


# --------------------------------------------------------------------------------------------
# Checkpoints.
@pytest.mark.parametrize("name", ["bert", "uvit"])
def test_our_format_round_trips_bit_exactly(tmp_path, name):
    model = _small(name)
    out = save_pretrained(model, tmp_path / "gen")
    loaded = load_model(out)  # no preset or kind given
    assert type(loaded) is type(model) and loaded.config == model.config
    ids, labels = _inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids, labels), model(ids, labels))
    assert json.loads((out / "config.json").read_text())["kind"] == {"bert": "bert_generator", "uvit": "uvit_generator"}[name]


# Official files carry no config; widths must be official ones (heads: 16 in every official generator).
OFFICIAL_SIZED = {
    "bert": BertGeneratorConfig(codebook_size=64, num_latent_tokens=8, num_classes=10, width=768, depth=1,
                                num_heads=16, mlp_dim=64),
    "uvit": UViTGeneratorConfig(codebook_size=64, num_latent_tokens=8, num_classes=10, width=1024, depth=2,
                                num_heads=16, mlp_dim=64),
}


def _official_file(model, path: Path, **extra) -> Path:
    torch.save({**generator_ours_to_official(model), **extra}, path)
    return path


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZED))
def test_official_bin_loads_without_a_preset(tmp_path, name):
    torch.manual_seed(0)
    model = build_generator(OFFICIAL_SIZED[name]).eval()
    loaded = load_model(_official_file(model, tmp_path / "generator.bin"))
    assert type(loaded) is type(model) and loaded.config == model.config
    ids, labels = _inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids, labels), model(ids, labels))


def test_official_bin_with_a_stale_position_ids_buffer_loads(tmp_path):
    torch.manual_seed(0)
    model = build_generator(OFFICIAL_SIZED["bert"]).eval()
    path = _official_file(model, tmp_path / "old.bin", **{"model.embeddings.position_ids": torch.arange(9)[None]})
    loaded = load_model(path)
    ids, labels = _inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(ids, labels), model(ids, labels))


def test_mismatching_official_bin_gets_one_line_in_official_names(tmp_path):
    sd = generator_ours_to_official(build_generator(OFFICIAL_SIZED["bert"]))
    sd.pop("model.encoder.layer.0.attention.self.key.bias")
    sd["model.encoder.layer.0.attention.self.bogus"] = torch.zeros(1)
    sd["model.embeddings.token_type_embeddings.weight"] = torch.zeros(3, 768)
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(CheckpointMismatchError) as e:
        load_model(tmp_path / "bad.bin")
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing 1: model.encoder.layer.0.attention.self.key.bias" in msg
    assert "unexpected 1: model.encoder.layer.0.attention.self.bogus" in msg
    assert "mis-shaped 1: model.embeddings.token_type_embeddings.weight (3, 768) != (2, 768)" in msg


def test_official_bin_of_unofficial_width_is_refused(tmp_path):
    torch.save(generator_ours_to_official(_small("bert")), tmp_path / "narrow.bin")
    with pytest.raises(CheckpointMismatchError, match="width 48 is not an official size"):
        load_model(tmp_path / "narrow.bin")


# --------------------------------------------------------------------------------------------
# Label dropout.
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_label_dropout_draws_one_number_per_label_at_any_probability(p):
    model = _small("bert")
    ids, labels = _inputs(model.config, b=5)
    torch.manual_seed(7)
    model(ids, labels, cond_drop_prob=p)
    after = torch.rand(4)
    torch.manual_seed(7)
    torch.rand(5)
    assert torch.equal(after, torch.rand(4))


def test_label_dropout_replaces_the_class_by_no_class():
    model = _small("uvit")
    ids, labels = _inputs(model.config, b=2)
    other = (labels + 1) % model.config.num_classes
    with torch.no_grad():
        assert torch.equal(model(ids, labels, cond_drop_prob=1.0), model(ids, other, cond_drop_prob=1.0))
        assert not torch.allclose(model(ids, labels, cond_drop_prob=0.0), model(ids, other, cond_drop_prob=0.0))
        # default: no dropout in eval mode, the config's label_dropout in train mode
        assert torch.equal(model(ids, labels), model(ids, labels, cond_drop_prob=0.0))
    drops_all = build_generator(dataclasses.replace(SMALL["uvit"], label_dropout=1.0))
    drops_all.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(drops_all.train()(ids, labels), model(ids, other, cond_drop_prob=1.0))


# --------------------------------------------------------------------------------------------
# Sampling.
def test_generate_is_reproducible_under_a_seed_and_returns_token_ids():
    torch.manual_seed(0)
    model = build_generator(GENERATOR_PRESETS["debug"]).eval()
    labels = torch.tensor([1, 7, 282, 999])
    sc = SAMPLING_PRESETS["L-32"]
    a = generate(model, labels, sc, generator=torch.Generator().manual_seed(3))
    b = generate(model, labels, sc, generator=torch.Generator().manual_seed(3))
    c = generate(model, labels, sc, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 32) and a.dtype == torch.int64
    assert 0 <= int(a.min()) and int(a.max()) < 256  # never [MASK] or a class id
    # ordinary tensors: they can feed modules that track gradients (a tokenizer's decoder, say)
    assert not a.is_inference()
    torch.nn.Embedding(256, 4)(a).sum().backward()
    torch.manual_seed(5)
    d = generate(model, labels, sc)
    torch.manual_seed(5)
    with torch.inference_mode():
        assert torch.equal(d, generate(model, labels, sc))
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 1000\)"):
        generate(model, torch.tensor([1000]))


@pytest.mark.parametrize("steps", [1, 8, 12])
def test_step_inputs_follow_the_arccos_schedule(steps):
    model = _small("bert")
    n = model.config.num_latent_tokens
    labels = torch.tensor([0, 3, 6])
    ids, step_inputs = generate(model, labels, SamplingConfig(num_sample_steps=steps, randomize_temperature=2.0),
                                generator=torch.Generator().manual_seed(0), return_step_inputs=True)
    assert step_inputs.shape == (steps, 3, n) and step_inputs.dtype == torch.int64
    masked = (step_inputs == model.config.mask_token_id).sum(-1)  # (s, b)
    expected, left = [n], n
    for s in range(1, steps):
        left = max(1, min(left - 1, math.floor(n * math.acos(s / steps) / (math.pi / 2))))
        expected.append(left)
    assert masked[:, 0].tolist() == expected
    # positions decided at one step keep their ids
    for s in range(1, steps):
        kept = step_inputs[s] != model.config.mask_token_id
        assert torch.equal(step_inputs[s][kept], ids[kept])


# --------------------------------------------------------------------------------------------
# Training pieces.
def test_mask_tokens_masks_at_least_one_and_writes_the_mask_id():
    tokens = torch.randint(0, 256, (512, 32))
    masked, mask = mask_tokens(tokens, 256, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and masked.dtype == torch.int64
    assert bool((mask.sum(1) >= 1).all())
    assert bool((masked[mask] == 256).all()) and torch.equal(masked[~mask], tokens[~mask])
    # arccos schedule: E[arccos(t) / (pi/2)] = 2 / pi of the tokens masked on average
    assert abs(mask.float().mean().item() - 2 / math.pi) < 0.03


def test_mask_count_follows_the_arccos_schedule_for_fixed_times():
    t = torch.tensor([0.0, 0.5, math.cos(math.pi / 4), 1.0])
    # 32 * arccos(t) / (pi/2): 32, 21.33 -> 21, 16, 0 -> at least 1
    _, mask = mask_tokens(torch.zeros(4, 32, dtype=torch.long), 99, timesteps=t)
    assert mask.sum(1).tolist() == [32, 21, 16, 1]


def test_mask_tokens_draws_like_the_official_code():
    """Times first, then a (B, N) permutation draw, from torch's global generator by default."""
    tokens = torch.randint(0, 64, (4, 16))
    torch.manual_seed(3)
    masked, mask = mask_tokens(tokens, 64)
    torch.manual_seed(3)
    t = torch.rand(4)
    ranks = torch.rand(4, 16).argsort(-1)
    count = (16 * (torch.acos(t) / (math.pi / 2)).clamp(1e-6, 1)).round().clamp(min=1)
    assert torch.equal(mask, ranks < count[:, None])


def test_loss_weights_and_accuracy_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]], requires_grad=True)
    targets = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[True, False, True]])
    loss, acc = masked_token_loss(logits, targets, mask)
    # smoothed targets (label smoothing 0.1, K = 2): 0.95 on the label, 0.05 on the other
    lse2, lse3 = math.log(1 + math.exp(2)), math.log(1 + math.exp(3))
    ce0 = -(0.95 * (2 - lse2) + 0.05 * (0 - lse2))
    ce1 = math.log(2)
    ce2 = -(0.95 * (0 - lse3) + 0.05 * (3 - lse3))
    assert loss.item() == pytest.approx((ce0 + 0.1 * ce1 + ce2) / 2.1, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)  # masked: right, wrong; the unmasked miss does not count
    loss.backward()
    assert logits.grad[0, 1].abs().sum() > 0  # unmasked positions still train, with weight 0.1
    # with weight 1 and no smoothing it is plain cross-entropy
    plain, _ = masked_token_loss(logits, targets, mask, label_smoothing=0.0, unmasked_weight=1.0)
    assert plain.item() == pytest.approx(F.cross_entropy(logits[0], targets[0]).item(), rel=1e-6)


def test_a_training_step_learns_the_debug_generator():
    """mask_tokens + forward (with label dropout) + masked_token_loss fit a fixed batch."""
    torch.manual_seed(0)
    model = build_generator(GENERATOR_PRESETS["debug"]).train()
    tokens = torch.randint(0, 256, (8, 32))
    labels = torch.randint(0, 1000, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        masked, mask = mask_tokens(tokens, model.config.mask_token_id)
        loss, _ = masked_token_loss(model(masked, labels), tokens, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5  # from ln(256) = 5.5 to ~3.3
