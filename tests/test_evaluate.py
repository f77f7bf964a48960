"""jobs/evaluate_tokenizer.py: the metric maths against the libraries, then the job end to end on real
JPEGs with tiny random models, a real local Ray / head and a real S3 server.

The real FID Inception weights cannot be had offline: the FID maths are checked with a small random
feature network passed as an object, and the Inception code path with a random state dict the
test saves in the library's own format (torchvision's Inception-v3 layout, as pytorch-fid ships it).
"""

from __future__ import annotations

import functools
import io
import json
import math
import operator
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from PIL import Image, ImageFilter
from pipeline_fixtures import committed_shards, s3_with_shards
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

from jobs.evaluate_tokenizer import main
from jobs.precompute_proxy import main as precompute
from pipelines.encode.model import inference_layout
from pipelines.evaluate.features import FeatureSpec, RandomFeatures, build_feature_net, frechet_distance
from pipelines.evaluate.measure import ssim
from pipelines.evaluate.report import reference_bytes
from pipelines.evaluate.stats import ShardStats
from pipelines.preprocess import CENTER, apply_view, decode_and_preprocess, to_model_input, to_uint8
from pipelines.shards import collect_images
from titok_core import (
    PRESETS,
    VQGAN_PRESETS,
    MaskGITVQGAN,
    ProxyPixelDecoder,
    TiTok,
    TiTokConfig,
    TiTokReleased,
    load_model,
    save_pretrained,
)
from titok_core.checkpoints import ours_to_official
from titok_core.losses import PerceptualLoss
from titok_core.metrics import FeatureMoments, codebook_stats, psnr

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"


def job(*args) -> int:
    return main([str(a) for a in args])


def metrics_of(out: Path) -> dict:
    return json.loads((Path(out) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """40 real ImageNet centre crops as the protocol makes them, (40, 3, 256, 256) uint8."""
    paths = sorted(SAMPLE.glob("*.JPEG"))[:40]
    return torch.from_numpy(np.stack([apply_view(decode_and_preprocess(p.read_bytes()), CENTER)
                                      for p in paths])).permute(0, 3, 1, 2).contiguous()


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g, dtype=torch.float64) * sigma
    return (images.double() + noise).round().clamp(0, 255).byte()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> str:
    """A random debug-size TiTok in its released form, in our checkpoint format (a directory)."""
    torch.manual_seed(0)
    cfg = PRESETS["debug"]
    model = TiTokReleased(cfg, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(cfg.pixel_vqgan)))
    return str(save_pretrained(model, tmp_path_factory.mktemp("tok") / "titok-debug"))


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> str:
    """Random weights in the FID Inception's file format (pytorch-fid: torchvision's Inception-v3 layout)."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    with torch.no_grad():  # He-scaled: with torch's default init the pool features vanish (~1e-8) over 94 layers
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.mul_(6**0.5)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def random_lpips(tmp_path_factory) -> str:
    """A whole LPIPS-VGG state dict (random backbone, the package's heads): what --lpips-weights accepts."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "lpips-vgg-random.pth"
    torch.save(PerceptualLoss(pretrained=False).lpips.state_dict(), path)
    return str(path)


# ---------------------------------------------------------------------------------------------------
# The maths, against the libraries


def test_merged_shard_statistics_give_the_librarys_one_pass_fid(crops):
    net = RandomFeatures(dim=16)  # the feature network, passed as an object
    fake = noisy(crops, 20)
    library = FrechetInceptionDistance(feature=net)
    library.update(crops, real=True)
    library.update(fake, real=False)
    expected = float(library.compute())
    shards = []
    for lo, hi in ((0, 13), (13, 30), (30, 40)):  # uneven shards, through the committed file format
        s = ShardStats.zeros(16, codebook_size=8)
        s.real.update(net(crops[lo:hi]))
        s.fake.update(net(fake[lo:hi]))
        shards.append(ShardStats.from_bytes(s.to_bytes()))
    random.Random(0).shuffle(shards)
    merged = functools.reduce(operator.add, shards)  # as the driver merges committed shards
    assert merged.real.n == merged.fake.n == 40
    got = frechet_distance(*merged.real.mean_and_covariance(), *merged.fake.mean_and_covariance())
    assert expected > 0 and got == pytest.approx(expected, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(crops):
    net = RandomFeatures(dim=16)
    real = FeatureMoments.zeros(16)
    real.update(net(crops))
    mu, sigma = real.mean_and_covariance()
    fids = []
    for s in (0, 5, 20, 80):
        fake = FeatureMoments.zeros(16)
        fake.update(net(noisy(crops, s)))
        fids.append(frechet_distance(mu, sigma, *fake.mean_and_covariance()))
    assert abs(fids[0]) < 1e-9 * fids[-1]
    assert fids == sorted(fids) and fids[1] > 1e3 * abs(fids[0])


def test_inception_path_loads_the_library_format_and_gives_the_standard_features(random_inception, crops):
    spec = FeatureSpec.inception(random_inception)
    assert spec.identity()["official_weights"] is False and len(spec.sha256) == 64
    net = build_feature_net(spec)
    saved = torch.load(random_inception, weights_only=True)
    assert torch.equal(net.net.Conv2d_1a_3x3.conv.weight.float(), saved["Conv2d_1a_3x3.conv.weight"])
    assert {p.dtype for p in net.parameters()} == {torch.float64}, "the official evaluator runs Inception in float64"
    images = crops[:2]
    with torch.inference_mode():
        ours = net(images)
        library = net.net(images)[0]  # torch-fidelity's own output (float64 network), cast to float32 on return
        standard = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=random_inception,
                                      antialias=False)(images)  # torchmetrics' FID extractor, TF1 resize, fp32
    assert ours.shape == (2, 2048) and ours.dtype == torch.float64
    assert (ours[0] - ours[1]).abs().max() > 1e-3, "features that tell images apart"
    torch.testing.assert_close(ours.float(), library, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.float(), standard, rtol=1e-3, atol=1e-4)
    # the Inception Score's classifier (the sampling job's IS): torch-fidelity's logits without the bias
    with torch.inference_mode():
        logits = net.logits(ours)
        unbiased = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                      feature_extractor_weights_path=random_inception, antialias=False)(images)
    assert logits.shape == (2, 1008) and logits.dtype == torch.float64
    torch.testing.assert_close(logits.float(), unbiased, rtol=1e-3, atol=1e-3)


class _Payload:  # an object a weights file must not be able to smuggle in
    pass


def test_inception_weights_that_run_code_or_are_another_network_are_refused(tmp_path):
    torch.save({"weight": _Payload()}, tmp_path / "code.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a plain state-dict file"):
        FeatureSpec.inception(str(tmp_path / "code.pth"))
    with pytest.raises(ValueError, match="is not the FID Inception-v3") as e:
        FeatureSpec.inception(str(tmp_path / "resnet.pth"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["noise", "blur", "jpeg"])
def test_psnr_and_ssim_match_scikit_image(crops, kind):
    real = crops[:3].permute(0, 2, 3, 1).numpy()
    if kind == "noise":
        fake = noisy(crops[:3], 12).permute(0, 2, 3, 1).numpy()
    else:
        fake = []
        for im in real:
            if kind == "blur":
                fake.append(np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(2))))
            else:
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="JPEG", quality=20)
                fake.append(np.asarray(Image.open(buf)))
        fake = np.stack(fake)
    r, f = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (real, fake))
    ours_psnr = psnr(r, f, reduction="none", max_value=255.0).numpy()
    ours_ssim = ssim(r, f).numpy()
    for i in range(3):
        assert ours_psnr[i] == pytest.approx(peak_signal_noise_ratio(real[i], fake[i], data_range=255), rel=1e-12)
        sk = structural_similarity(real[i], fake[i], channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False)
        assert ours_ssim[i] == pytest.approx(sk, abs=1e-4)  # float32 SSIM maps
    assert ssim(r, r).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_codebook_usage_and_perplexity_on_hand_made_tokens():
    a, b = ShardStats.zeros(4, codebook_size=8), ShardStats.zeros(4, codebook_size=8)
    a.token_counts += np.bincount([0, 0, 1, 1], minlength=8)
    b.token_counts += np.bincount([2, 2, 3, 3], minlength=8)
    usage, perplexity = codebook_stats(torch.from_numpy((a + b).token_counts))
    assert usage == 0.5 and perplexity == pytest.approx(4.0)  # 4 of 8 entries, used uniformly
    usage, perplexity = codebook_stats(torch.tensor([3, 1, 0, 0]))
    assert usage == 0.5 and perplexity == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


# ---------------------------------------------------------------------------------------------------
# The job


def expected_row(model, jpeg: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the protocol says for one image: (crop, uint8 reconstruction, tokens), by hand."""
    crop = apply_view(decode_and_preprocess(jpeg), CENTER)
    model = inference_layout(model, torch.device("cpu"))  # the job's layout (channels-last for the teacher)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's actor (Ray gives a 1-CPU actor one thread): kernels round alike
    try:
        with torch.inference_mode():
            x = to_model_input(crop[None])
            tokens = model.encode(x)
            recon = model.decode(tokens) if isinstance(model, MaskGITVQGAN) else model.decode_tokens(tokens, clamp=True)
    finally:
        torch.set_num_threads(threads)
    return crop, to_uint8(recon)[0], tokens[0].numpy()


def test_job_reports_every_metric_of_the_reconstructions(ray_local, sample_shards, sample_labels, tiny_tokenizer,
                                                         random_lpips, tmp_path, capsys):
    shards, n = sample_shards
    out = tmp_path / "eval"
    # batch 1: the by-hand reference below runs image by image, and CPU kernels may round differently per batch size
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer, "--random-features",
               "--lpips-weights", random_lpips, "--batch-size", "1") == 0
    result = metrics_of(out)
    m = result["metrics"]
    assert result["images"] == n and result["quarantined"] == 0 and result["status"] == "ok"
    assert result["tokenizer"]["kind"] == "TiTokReleased" and result["protocol"]["name"] == "titok-rfid-v1"
    assert "rfid" not in m, "a random feature network never yields a number called rFID"
    rows = pd.read_parquet(out / "per_image").set_index("key")
    assert len(rows) == n and list(rows.columns) == ["label", "source_shard", "source_member", "tokens", "psnr",
                                                      "ssim", "lpips"]
    model, lp = load_model(tiny_tokenizer), PerceptualLoss(weights=random_lpips)
    paths = {im.key: im.path for im in collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))}
    real, fake = [], []
    for key, row in rows.sort_index().iterrows():
        crop, recon, tokens = expected_row(model, Path(paths[key]).read_bytes())
        real.append(crop)
        fake.append(recon)
        assert row.label == sample_labels[key]
        np.testing.assert_array_equal(row.tokens.astype(np.int64), tokens)
        assert row.psnr == pytest.approx(peak_signal_noise_ratio(crop, recon, data_range=255), rel=1e-9)
        assert row.ssim == pytest.approx(structural_similarity(crop, recon, channel_axis=-1, data_range=255,
                                                               gaussian_weights=True, sigma=1.5,
                                                               use_sample_covariance=False), abs=1e-4)
        with torch.inference_mode():
            assert row.lpips == pytest.approx(float(lp(to_model_input(recon[None]), to_model_input(crop[None]))),
                                              rel=1e-4)
    # FID: the library's one pass over the same crops and reconstructions, with the same feature network
    library = FrechetInceptionDistance(feature=RandomFeatures())
    library.update(torch.from_numpy(np.stack(real)).permute(0, 3, 1, 2), real=True)
    library.update(torch.from_numpy(np.stack(fake)).permute(0, 3, 1, 2), real=False)
    assert m["fid_random_features"] == pytest.approx(float(library.compute()), rel=1e-5)
    assert m["psnr"] == pytest.approx(rows.psnr.mean(), rel=1e-6)
    assert m["ssim"] == pytest.approx(rows.ssim.mean(), rel=1e-5) and m["lpips"] == pytest.approx(rows.lpips.mean(),
                                                                                                    rel=1e-5)
    counts = np.bincount(np.concatenate(rows.tokens.to_list()).astype(np.int64), minlength=m["codebook_size"])
    usage, perplexity = codebook_stats(torch.from_numpy(counts))
    assert m["codebook_size"] == 256 and m["codebook_usage"] == usage
    assert m["codebook_perplexity"] == pytest.approx(perplexity, rel=1e-9)
    per_class = result["per_class"]
    assert sum(c["images"] for c in per_class.values()) == n
    for label, c in per_class.items():
        assert c["psnr"] == pytest.approx(rows[rows.label == int(label)].psnr.mean(), rel=1e-6)
    # grids: input | reconstruction, the worst by LPIPS on top
    worst = np.asarray(Image.open(out / "worst.png"))
    assert worst.shape == (8 * 256, 512, 3) and (out / "best.png").exists()
    top = rows.lpips.idxmax()
    crop, recon, _ = expected_row(model, Path(paths[top]).read_bytes())
    np.testing.assert_array_equal(worst[:256], np.concatenate([crop, recon], axis=1))
    md = (out / "metrics.md").read_text()
    assert "FID (random features, not rFID)" in md and "not comparable" in md and "50,000" in md
    assert result["comparable_with_paper"] is False
    assert "FID (random features)" in capsys.readouterr().out


def test_metrics_do_not_depend_on_workers_or_shard_order(ray_local, many_shards, tiny_tokenizer, tmp_path, capsys):
    shards, keys = many_shards
    tars = sorted(Path(shards).glob("*.tar"))[:6]
    listing = tmp_path / "shuffled.txt"
    listing.write_text("\n".join(map(str, random.Random(1).sample(tars, len(tars)))) + "\n")
    one = tmp_path / "one"
    common = ["--tokenizer", tiny_tokenizer, "--random-features", "--no-lpips", "--batch-size", "2"]
    brace = "{" + ",".join(map(str, tars)) + "}"  # a brace pattern, in name order
    assert job("--input", brace, "--output", one, "--workers", "1", *common) == 0
    two = tmp_path / "two"
    assert job("--input", listing, "--output", two, "--workers", "2", "--cpus-per-worker", "0.5", *common) == 0
    a, b = metrics_of(one), metrics_of(two)
    assert a["images"] == b["images"] == 12
    assert a["metrics"] == b["metrics"] and a["per_class"] == b["per_class"]  # exactly, not approximately
    rows = [pd.read_parquet(d / "per_image").sort_values("key").reset_index(drop=True) for d in (one, two)]
    pd.testing.assert_frame_equal(rows[0], rows[1])
    assert (one / "worst.png").read_bytes() == (two / "worst.png").read_bytes()
    # the same --output with another tokenizer is refused before anything runs
    capsys.readouterr()
    other = save_pretrained(TiTokReleased(PRESETS["debug"]), tmp_path / "other")
    assert job("--input", listing, "--output", two, "--tokenizer", other, "--random-features", "--no-lpips") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another tokenizer sha256" in err[0] and "--overwrite" in err[0]


def official_titok_bin(path: Path) -> Path:
    """A released TiTok saved as an official .bin (official widths, 256x256, one layer: small but real)."""
    torch.manual_seed(3)
    cfg = TiTokConfig(enc_width=512, enc_layers=1, enc_heads=8, dec_width=512, dec_layers=1, dec_heads=8,
                      num_latent_tokens=8, codebook_size=32, pixel_vqgan=VQGAN_PRESETS["debug"])
    model = TiTokReleased(cfg, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(cfg.pixel_vqgan)))
    torch.save({ours_to_official(k, True): v for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("which", ["teacher", "official-bin"])
def test_teacher_and_official_bin_as_tokenizers(ray_local, sample_shards, tiny_teacher, random_inception, tmp_path,
                                                which):
    shards, _ = sample_shards
    tokenizer = tiny_teacher if which == "teacher" else official_titok_bin(tmp_path / "tokenizer_titok_tiny.bin")
    out = tmp_path / "eval"
    # the real Inception code path (library-format file, random weights): a number called rFID
    assert job("--input", f"{shards}/train-000000.tar", "--output", out, "--tokenizer", tokenizer,
               "--inception-weights", random_inception, "--no-lpips", "--batch-size", "1") == 0
    result = metrics_of(out)
    assert result["tokenizer"]["kind"] == ("MaskGITVQGAN" if which == "teacher" else "TiTokReleased")
    assert result["metrics"]["rfid"] > 0 and result["features"]["official_weights"] is False
    assert any("pt_inception-2015-12-05-6726825d" in note for note in result["notes"])
    rows = pd.read_parquet(out / "per_image")
    model = load_model(tokenizer)
    assert rows.tokens.map(len).unique().tolist() == [256 if which == "teacher" else 8]
    assert result["metrics"]["codebook_size"] == (1024 if which == "teacher" else 32)
    paths = {im.key: im.path for im in collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))}
    for row in rows.itertuples():
        crop, recon, tokens = expected_row(model, Path(paths[row.key]).read_bytes())
        np.testing.assert_array_equal(row.tokens.astype(np.int64), tokens)
        assert row.psnr == pytest.approx(peak_signal_noise_ratio(crop, recon, data_range=255), rel=1e-9)


def test_proxy_dataset_input_gives_the_numbers_of_its_shards(ray_local, sample_shards, tiny_teacher, tiny_tokenizer,
                                                             tmp_path):
    shards, _ = sample_shards
    one = f"{shards}/train-000001.tar"
    proxy = tmp_path / "proxy"
    assert precompute(["--input", one, "--output", str(proxy), "--teacher", tiny_teacher, "--views", "center"]) == 0
    common = ["--tokenizer", tiny_tokenizer, "--random-features", "--no-lpips"]
    assert job("--input", one, "--output", tmp_path / "from-shards", *common) == 0
    assert job("--input", proxy, "--output", tmp_path / "from-proxy", *common) == 0
    a, b = metrics_of(tmp_path / "from-shards"), metrics_of(tmp_path / "from-proxy")
    assert a["images"] == b["images"] == 4 and a["metrics"] == b["metrics"]  # PNG-stored pixels are the same pixels


def test_bad_input_is_quarantined(ray_local, bad_corpus, tiny_tokenizer, tmp_path):
    shards, good, reasons = bad_corpus
    out = tmp_path / "eval"
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer, "--random-features", "--no-lpips",
               "--max-error-rate", "1") == 0
    assert sorted(pd.read_parquet(out / "per_image").key) == sorted(good)
    errors = pd.read_parquet(out / "per_image" / "_errors")
    assert sorted(zip(errors.key, errors.reason)) == sorted(reasons)
    result = metrics_of(out)
    assert result["images"] == len(good) and result["quarantined"] == len(reasons)


def test_missing_weights_give_one_line_and_exit_2_with_nothing_written(sample_shards, tiny_tokenizer, random_inception,
                                                                       tmp_path, monkeypatch, capsys):
    shards, _ = sample_shards
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # the libraries' cache: empty
    monkeypatch.setenv("TITOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there: offline
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    out = tmp_path / "eval"
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer) == 2
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer,
               "--inception-weights", random_inception) == 2
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer, "--no-lpips",
               "--inception-weights", tmp_path / "nope.pth") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    hub = str(tmp_path / "torch-home" / "hub" / "checkpoints")
    assert "--inception-weights" in err[0] and hub in err[0] and "pt_inception-2015-12-05-6726825d.pth" in err[0]
    assert "--lpips-weights" in err[1] and hub in err[1] and "--no-lpips" in err[1]
    assert "--inception-weights" in err[2] and "nope.pth" in err[2]
    assert not out.exists()


def test_other_one_line_errors(sample_shards, tiny_tokenizer, random_inception, crops, tmp_path, capsys):
    shards, _ = sample_shards
    stage1 = save_pretrained(TiTok(PRESETS["debug"]), tmp_path / "stage1")
    np.savez(tmp_path / "adm.npz", mu=np.zeros(16), sigma=np.eye(16))  # what an ADM reference batch holds
    saved = FeatureMoments.zeros(16)
    saved.update(RandomFeatures()(crops))
    (tmp_path / "ours.npz").write_bytes(reference_bytes(saved, FeatureSpec.random()))
    common = ["--input", shards, "--output", tmp_path / "o", "--no-lpips"]
    assert job(*common, "--random-features", "--tokenizer", stage1) == 2
    assert job(*common, "--random-features", "--tokenizer", tiny_tokenizer, "--resolution", "128") == 2
    assert job(*common, "--random-features", "--tokenizer", tiny_tokenizer, "--reference-stats", tmp_path / "adm.npz") == 2
    assert job(*common, "--random-features", "--tokenizer", tiny_tokenizer, "--reference-stats", tmp_path / "ours.npz",
               "--save-reference-stats", tmp_path / "again.npz") == 2
    assert job(*common, "--inception-weights", random_inception, "--tokenizer", tiny_tokenizer,
               "--reference-stats", tmp_path / "ours.npz") == 2
    assert job("--input", tmp_path / "no-shards-here", "--output", tmp_path / "o", "--no-lpips", "--random-features",
               "--tokenizer", tiny_tokenizer) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("error: ") for line in err)
    assert "stage-1" in err[0] and "image size 256" in err[1]
    assert "ADM" in err[2] and "about 2x" in err[2] and "--save-reference-stats" in err[2]
    assert "use one of them" in err[3] and "another feature network" in err[4] and "no input shards" in err[5]
    assert not (tmp_path / "o").exists()


def test_kill_minus_9_and_rerun_recomputes_nothing_committed(ray_head, many_shards, tiny_tokenizer, tmp_path):
    shards, keys = many_shards
    env = {**os.environ, **ray_head.env}

    def cmd(out: Path) -> list[str]:
        return [sys.executable, str(REPO / "jobs" / "evaluate_tokenizer.py"), "--input", shards, "--output", str(out),
                "--tokenizer", tiny_tokenizer, "--random-features", "--no-lpips"]

    reference = tmp_path / "uninterrupted"
    done = subprocess.run(cmd(reference), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while committed_shards(out / "per_image") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    shard_dir = out / "per_image"
    survivors = {p.name: (p.read_text(), (shard_dir / "_stats" / p.name.replace(".json", ".npz")).stat().st_mtime_ns)
                 for p in (shard_dir / "_success").glob("*.json")}
    assert 2 <= len(survivors) < 10, "killed between the second and the last commit"
    assert not (out / "metrics.json").exists()
    done = subprocess.run(cmd(out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, (record, stats_mtime) in survivors.items():  # committed shards were not computed again
        assert (shard_dir / "_success" / name).read_text() == record
        assert (shard_dir / "_stats" / name.replace(".json", ".npz")).stat().st_mtime_ns == stats_mtime
    assert json.loads((shard_dir / "_summary.json").read_text())["shards_skipped"] == len(survivors)
    a, b = metrics_of(reference), metrics_of(out)
    assert b["images"] == len(keys) and a["metrics"] == b["metrics"] and a["per_class"] == b["per_class"]
    assert sorted(pd.read_parquet(shard_dir).key) == sorted(keys)


def test_ray_job_submit_to_a_local_head(ray_head, sample_shards, tiny_tokenizer, tmp_path):
    shards, n = sample_shards
    out = tmp_path / "eval"
    cmd = ["ray", "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO), "--",
           "python", "jobs/evaluate_tokenizer.py", "--input", shards, "--output", str(out),
           "--tokenizer", tiny_tokenizer, "--random-features", "--no-lpips"]
    proc = subprocess.run(cmd, env={**os.environ, **ray_head.env}, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    assert metrics_of(out)["images"] == n and (out / "metrics.md").exists()


def test_s3_input_output_and_saved_reference_statistics(ray_local, s3_server, sample_shards, tiny_tokenizer,
                                                        monkeypatch):
    shards, n = sample_shards
    fs, bucket = s3_with_shards(s3_server, shards, "val")
    for f in Path(tiny_tokenizer).iterdir():
        fs.put_file(str(f), f"{bucket}/models/titok-debug/{f.name}")
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TITOK_CACHE", str(Path(shards).parent / "s3-cache-eval"))
    common = ["--input", f"s3://{bucket}/val", "--tokenizer", f"s3://{bucket}/models/titok-debug",
              "--random-features", "--no-lpips", "--endpoint-url", s3_server.endpoint_url]
    ref = f"s3://{bucket}/reference/val-random-features.npz"
    assert job(*common, "--output", f"s3://{bucket}/eval/a", "--save-reference-stats", ref) == 0
    first = json.loads(fs.cat_file(f"{bucket}/eval/a/metrics.json"))
    assert first["images"] == n and len(fs.glob(f"{bucket}/eval/a/per_image/_stats/*.npz")) == 3
    assert pq.read_table(fs.glob(f"{bucket}/eval/a/per_image/*.parquet"), filesystem=fs).num_rows == n
    with np.load(io.BytesIO(fs.cat_file(f"{bucket}/reference/val-random-features.npz")), allow_pickle=False) as z:
        assert int(z["n"]) == n and z["sigma"].shape == (16, 16)
        assert json.loads(str(z["protocol"]))["name"] == first["protocol"]["name"]
    assert job(*common, "--output", f"s3://{bucket}/eval/b", "--reference-stats", ref) == 0
    second = json.loads(fs.cat_file(f"{bucket}/eval/b/metrics.json"))
    assert second["metrics"]["fid_random_features"] == pytest.approx(first["metrics"]["fid_random_features"],
                                                                     rel=1e-12)
    assert second["reference"] == {"kind": "saved statistics", "source": ref, "images": n}
    with np.load(io.BytesIO(fs.cat_file(fs.glob(f"{bucket}/eval/b/per_image/_stats/*.npz")[0])), allow_pickle=False) as z:
        assert "real_n" not in z.files, "with saved reference statistics the input crops are not measured again"
