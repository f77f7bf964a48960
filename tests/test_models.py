"""Model behaviour a user relies on, beyond the reference numbers."""

import pytest
import torch
import torch.nn.functional as F

from titok_core import PRESETS, VQGAN_PRESETS, MaskGITVQGAN, ProxyPixelDecoder, TiTok, TiTokReleased, get_preset
from titok_core.presets import TiTokConfig


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_maps_images_to_tokens_and_back(preset):
    cfg = PRESETS[preset]
    with torch.device("meta"):  # shapes only: the full sizes are too big for a CPU test
        model = TiTokReleased(cfg)
        x = torch.empty(2, 3, cfg.image_size, cfg.image_size)
        logits, q = model.titok(x)
        images = model.decode_tokens(q.codes)
    assert q.codes.shape == (2, cfg.num_latent_tokens)
    assert logits.shape == (2, cfg.proxy_codebook_size, cfg.dec_grid, cfg.dec_grid)  # 1024 in the paper
    assert images.shape == x.shape


def test_paper_presets():
    assert {n: (c.num_latent_tokens, c.enc_width, c.codebook_size) for n, c in PRESETS.items() if n not in ("debug", "demo")} == {
        "S-128": (128, 512, 4096), "B-64": (64, 768, 4096), "L-32": (32, 1024, 4096)}
    with pytest.raises(ValueError, match="unknown TiTok preset 'XL'"):
        get_preset("XL")


def test_bad_sizes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="not divisible by enc_patch_size"):
        TiTokConfig(image_size=250)
    with pytest.raises(ValueError, match="enc_width 100 is not divisible by enc_heads 16"):
        TiTokConfig(enc_width=100)


def test_stage1_trains_end_to_end_through_the_quantizer():
    torch.manual_seed(0)
    model = TiTok(PRESETS["debug"]).train()
    x = torch.rand(2, 3, 256, 256)
    codes = torch.randint(0, 1024, (2, 16, 16))
    logits, q = model(x)
    loss = F.cross_entropy(logits, codes) + q.quantizer_loss
    loss.backward()
    # the straight-through estimator carries the decoder's gradient into the encoder
    assert model.encoder.patch_embed.weight.grad.abs().sum() > 0
    assert model.encoder.latent_tokens.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad.abs().sum() > 0  # codebook loss
    assert 0 <= q.codes.min() and q.codes.max() < PRESETS["debug"].codebook_size


def test_released_form_is_stage1_plus_the_teacher_decoder():
    torch.manual_seed(0)
    cfg = PRESETS["debug"]
    teacher = MaskGITVQGAN(cfg.pixel_vqgan).eval()
    stage1 = TiTok(cfg).eval()
    released = TiTokReleased(cfg, titok=stage1, pixel=ProxyPixelDecoder.from_teacher(teacher)).eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        tokens = released.encode(x)
        assert torch.equal(tokens, stage1.encode(x))
        # near one-hot proxy logits decode like the teacher decoding those codes
        codes = torch.randint(0, 1024, (2, 256))
        logits = 1e4 * F.one_hot(codes, 1024).float().permute(0, 2, 1).reshape(2, 1024, 16, 16)
        # (not bit-equal: the einsum hands the decoder a channels-last tensor, convs then sum in another order)
        assert torch.allclose(released.pixel(logits).clamp(0, 1), teacher.decode(codes), atol=1e-3)
        images = released.decode_tokens(tokens, clamp=True)
    assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1
    assert set(released.state_dict()) == {f"titok.{k}" for k in stage1.state_dict()} | {
        f"pixel.{k}" for k in ProxyPixelDecoder(cfg.pixel_vqgan).state_dict()}


def test_released_forward_keeps_encoder_frozen():
    torch.manual_seed(0)
    model = TiTokReleased(PRESETS["debug"]).train()
    images, q = model(torch.rand(1, 3, 256, 256))
    images.mean().backward()
    assert model.titok.encoder.patch_embed.weight.grad is None
    assert model.titok.decoder.decoder_embed.weight.grad is not None
    assert model.pixel.decoder.conv_out.weight.grad is not None
    assert float(q.quantizer_loss) == 0.0


def test_teacher_codes_and_reconstruction():
    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["debug"]).eval()
    x = torch.rand(2, 3, 256, 256)
    codes = teacher.encode(x)
    assert codes.shape == (2, 256) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 1024
    rec = teacher.decode(codes)
    assert rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
    assert torch.equal(teacher.decode(codes.view(2, 16, 16)), rec)
    # any image size divisible by 16; a non-square grid needs its shape
    wide = teacher.encode(torch.rand(1, 3, 256, 384))
    assert wide.shape == (1, 16 * 24)
    assert teacher.decode(wide, grid=(16, 24)).shape == (1, 3, 256, 384)
    with pytest.raises(ValueError, match="not a square grid"):
        teacher.decode(wide)


def test_teacher_channels_last_gives_the_same_codes():
    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["debug"]).eval()
    x = torch.rand(2, 3, 128, 128)
    ref = teacher.encode(x)
    teacher = teacher.to(memory_format=torch.channels_last)
    assert torch.equal(teacher.encode(x), ref)


def test_teacher_bf16_autocast_agrees_with_fp32():
    torch.manual_seed(0)
    teacher = MaskGITVQGAN(VQGAN_PRESETS["debug"]).eval().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 128, 128)
    ref = teacher.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = teacher.encode(x)
    assert low.dtype == torch.int64
    assert (low == ref).float().mean() > 0.9
