"""The training pieces on their own (no Ray): losses, discriminator, EMA, schedules, recipes, views, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.preprocess import View, apply_view, crop_view
from pipelines.train.data import choose_view
from pipelines.train.optim import _no_decay, cosine_with_warmup, make_adamw
from pipelines.train.outputs import make_grid
from pipelines.train.recipes import RECIPES, get_recipe
from titok_core import PRESETS, TiTok
from titok_core.discriminator import DISCRIMINATOR_PRESETS, PatchDiscriminator
from titok_core.ema import EMA
from titok_core.losses import (
    ConvNeXtFeatureLoss,
    LeCamEMA,
    MissingWeightsError,
    PerceptualLoss,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    proxy_code_accuracy,
    proxy_code_loss,
)
from titok_core.metrics import codebook_stats


def test_proxy_code_loss_is_cross_entropy_over_the_grid():
    torch.manual_seed(0)
    logits, codes = torch.randn(2, 1024, 4, 4), torch.randint(0, 1024, (2, 16))
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, 1024), codes.reshape(-1))
    torch.testing.assert_close(proxy_code_loss(logits, codes), expected)
    perfect = F.one_hot(codes.view(2, 4, 4), 1024).permute(0, 3, 1, 2).float()
    assert proxy_code_accuracy(perfect, codes) == 1.0


def test_codebook_usage_and_perplexity():
    assert codebook_stats(torch.tensor([5.0, 5.0, 0.0, 0.0])) == pytest.approx((0.5, 2.0))
    assert codebook_stats(torch.zeros(4)) == (0.0, 0.0)


def test_hinge_and_lecam():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake) == pytest.approx(0.5 * (0.5 + 0.5))
    assert hinge_g_loss(fake) == pytest.approx(1.0)
    lecam = LeCamEMA(decay=0.5)
    assert lecam.loss(torch.tensor([1.0]), torch.tensor([-1.0])) == pytest.approx(1.0 + 1.0)  # EMAs start at 0
    assert (float(lecam.ema_real), float(lecam.ema_fake)) == (0.5, -0.5)


def test_adaptive_weight_balances_gradients_at_the_last_layer():
    w = torch.nn.Parameter(torch.ones(3))
    nll, g = (2 * w).sum(), (0.5 * w).sum()
    assert adaptive_gan_weight(nll, g, w) == pytest.approx(4.0, rel=1e-3)


def test_discriminator_gives_patch_logits_at_official_sizes():
    d = PatchDiscriminator(DISCRIMINATOR_PRESETS["official"])
    out = PatchDiscriminator(DISCRIMINATOR_PRESETS["debug"])(torch.rand(2, 3, 256, 256))
    assert out.shape == (2, 1, 16, 16)
    # blur downsampling halves even sizes exactly, as the official BlurBlock
    x = torch.rand(1, 128, 64, 64)
    assert d.stages[0](x).shape == (1, 128, 32, 32)
    # the official NLayerDiscriminator's parameter count (5x5 stem, 3 stages 128-256-512, 1x1 + 5x5 head)
    assert sum(p.numel() for p in d.parameters()) == 1_909_889


def test_ema_follows_the_official_warmup_and_copies_frozen_weights():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].requires_grad_(False)
    ema = EMA(model, decay=0.999)
    assert [ema.decay_at(n) for n in (1, 2, 11)] == [0.0, pytest.approx(2 / 11), pytest.approx(11 / 20)]
    assert ema.decay_at(100_000) == 0.999
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: a copy
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), model.parameters()))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    assert torch.equal(ema.module[1].weight, model[1].weight)  # frozen: copied bit-exactly
    assert not torch.equal(ema.module[0].weight, model[0].weight)


def test_cosine_schedule_and_weight_decay_groups():
    recipe = get_recipe(1, "L-32")
    model = TiTok(PRESETS["debug"])
    opt = make_adamw(model, recipe.optimizer)
    sched = cosine_with_warmup(opt, recipe.optimizer, total_steps=1_000_000)
    lrs = {}
    for step in range(10_001):
        if step in (0, 5_000, 10_000):
            lrs[step] = opt.param_groups[0]["lr"]
        opt.step()  # no gradients: a no-op that keeps the scheduler's order check quiet
        sched.step()
    assert lrs == {0: 0.0, 5_000: pytest.approx(5e-5), 10_000: pytest.approx(1e-4)}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-4]
    assert _no_decay("encoder.latent_tokens", model.encoder.latent_tokens)
    assert _no_decay("encoder.patch_embed.weight", model.encoder.patch_embed.weight)  # "embed", as official
    assert not _no_decay("encoder.blocks.0.attn.qkv.weight", model.encoder.blocks[0].attn.qkv.weight)


def test_paper_recipes_are_the_official_configs():
    for preset in ("S-128", "B-64", "L-32"):
        s1, s2 = RECIPES[1][preset], RECIPES[2][preset]
        assert (s1.batch_size, s1.max_steps, s1.optimizer.lr, s1.optimizer.betas, s1.optimizer.weight_decay,
                s1.optimizer.warmup_steps, s1.optimizer.end_lr, s1.optimizer.max_grad_norm, s1.ema_decay,
                s1.quantizer_weight) == (256, 1_000_000, 1e-4, (0.9, 0.99), 1e-4, 10_000, 1e-5, 1.0, 0.999, 1.0)
        g = s2.gan
        assert (s2.max_steps, s2.optimizer.betas, s2.optimizer.warmup_steps, s2.quantizer_weight) == (
            500_000, (0.9, 0.999), 5_000, 0.0)
        assert (g.reconstruction, g.reconstruction_weight, g.perceptual, g.perceptual_weight, g.discriminator_start,
                g.discriminator_factor, g.discriminator_weight, g.adaptive_weight, g.lecam_weight) == (
            "l2", 1.0, "convnext_s", 0.1, 20_000, 1.0, 0.01, False, 0.001)
    with pytest.raises(ValueError, match="not overridable"):
        RECIPES[1]["debug"].with_overrides(optimizer=None)


def test_views_match_the_precompute_views_and_are_seeded():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (256, 341, 3), dtype=np.uint8)
    for fraction, flip in ((0.25, False), (0.75, True)):
        offset = round(fraction * (341 - 256))
        np.testing.assert_array_equal(crop_view(image, offset, flip, 256), apply_view(image, View(fraction, flip)))
    picks = [choose_view(42, epoch, "n01440764_1", 4) for epoch in range(200)]
    assert picks == [choose_view(42, epoch, "n01440764_1", 4) for epoch in range(200)]
    assert set(picks) == {0, 1, 2, 3}


def test_grid_puts_inputs_next_to_reconstructions():
    a, b = np.zeros((3, 8, 8, 3), np.uint8), np.full((3, 8, 8, 3), 255, np.uint8)
    grid = make_grid(a, b)
    assert grid.shape == (24, 16, 3) and grid[:, :8].max() == 0 and grid[:, 8:].min() == 255


def test_perceptual_backbones_offline_without_weights_name_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there: offline
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with pytest.raises(MissingWeightsError, match="--lpips-weights") as e:
        PerceptualLoss(pretrained=True)
    assert "\n" not in str(e.value)
    with pytest.raises(MissingWeightsError, match="--convnext-weights"):
        ConvNeXtFeatureLoss(pretrained=True)
    loss = PerceptualLoss(pretrained=False, resize=64)  # explicit random backbone: offline is fine
    x = torch.rand(2, 3, 96, 96)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6) and float(loss(x, torch.rand_like(x))) > 0


def test_perceptual_loss_loads_a_local_vgg16_file(tmp_path):
    import torchvision
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    loss = PerceptualLoss(weights=str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(loss.lpips.net.slice1[0].weight, vgg.features[0].weight)
    torch.testing.assert_close(getattr(loss.lpips.net.slice5, "28").weight, vgg.features[28].weight)
