"""jobs/train_generator.py and jobs/sample_generator.py end to end: real JPEGs -> tokens (tiny random
TiTok) -> a debug generator on 2 Ray Train workers of a real local head (a worker killed mid-run, then
the driver killed with kill -9 and the same command sent with `ray job submit`) -> samples (sent with
`ray job submit` on 2 workers, and in-process on 1: the same bytes; the ADM npz) -> FID and IS
against reference statistics of real JPEGs (a small random feature network, as in the evaluation
tests); one-line errors.

One trained generator and two sample runs serve the whole module: the CI budget of these tests is
about 3 minutes on 2 cores."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs.sample_generator import main as sample
from jobs.tokenize_dataset import main as tokenize
from jobs.train_generator import main as train
from pipelines.evaluate.features import FeatureSpec, RandomFeatures
from pipelines.train.config import FAIL_AT_STEP_ENV
from pipelines.train.recipes import GENERATOR_RECIPES
from titok_core import (
    GENERATOR_PRESETS,
    PRESETS,
    BertGenerator,
    MaskGITVQGAN,
    ProxyPixelDecoder,
    TiTok,
    TiTokReleased,
    build_generator,
    load_model,
    save_pretrained,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
STEPS = GENERATOR_RECIPES["debug"].max_steps  # 60; checkpoints every 20
KILL_AT = 30  # between the checkpoints at 20 and 40: the restart redoes 21..30
ATTEMPT_TIMEOUT_S = 240


def train_job(*args) -> int:
    return train([str(a) for a in args])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generator_recipes_are_the_official_ones():
    r = GENERATOR_RECIPES["L-32"]
    o = r.optimizer
    assert (o.lr, o.betas, o.weight_decay, o.warmup_steps, o.end_lr, o.max_grad_norm) == \
        (2e-4, (0.9, 0.96), 0.03, 10_000, 1e-5, 1.0)
    assert (r.batch_size, r.max_steps, r.ema_decay, r.mixed_precision) == (2048, 500_000, 0.999, "bf16")
    assert (r.label_dropout, r.label_smoothing, r.unmasked_weight) == (0.1, 0.1, 0.1)
    assert {name: rec.generator_config() for name, rec in GENERATOR_RECIPES.items()} == {
        name: dataclasses.replace(GENERATOR_PRESETS[name], label_dropout=0.1) for name in ("L-32", "B-64", "S-128", "debug")}
    assert GENERATOR_RECIPES["S-128"].sampling == "S-128" and GENERATOR_RECIPES["debug"].sampling == "L-32"


def test_generator_weight_decay_skips_norms_biases_and_embeddings():
    from pipelines.train.optim import make_adamw
    from pipelines.train.recipes import OptimizerConfig
    model = build_generator(GENERATOR_PRESETS["debug"])
    groups = make_adamw(model, OptimizerConfig(weight_decay=0.03)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for g in groups if g["weight_decay"] for p in g["params"])
    assert all(n.endswith("weight") and "norm" not in n and "embed" not in n for n in decayed)
    assert "lm_head.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert len(decayed) + sum(len(g["params"]) for g in groups if not g["weight_decay"]) == len(names)


def test_token_sampler_picks_views_as_stage1_and_names_bad_rows():
    from pipelines.train.data import DatasetError, choose_view
    from pipelines.train.token_data import TokenSampler
    stored = np.empty(2, dtype=object)  # per sample, its views' tokens (as Ray Data hands list columns over)
    for i in range(2):
        stored[i] = np.stack([np.full(32, 7), np.full(32, 9)])  # view 0: all 7, view 1: all 9
    batch = {"key": np.array(["a", "b"], dtype=object), "label": np.array([3, 4], np.int32), "tokens": stored,
             "_source_file": np.array(["f.parquet"] * 2, dtype=object)}
    out = TokenSampler(seed=42, codebook_size=256, num_classes=1000)(batch, epoch=3)
    assert out["views"].tolist() == [choose_view(42, 3, k, 2) for k in ("a", "b")]
    assert out["tokens"].tolist() == [[7 + 2 * v] * 32 for v in out["views"]] and out["labels"].tolist() == [3, 4]
    with pytest.raises(DatasetError, match="f.parquet, sample a: class label 3 is outside the generator's"):
        TokenSampler(seed=42, codebook_size=256, num_classes=3)(batch, epoch=0)
    with pytest.raises(DatasetError, match="sample a: token 9|sample a: token 7"):
        TokenSampler(seed=42, codebook_size=5, num_classes=1000)(batch, epoch=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    """A random debug-size TiTok in its released form (codebook 256, 32 tokens), our format."""
    torch.manual_seed(0)
    cfg = PRESETS["debug"]
    model = TiTokReleased(cfg, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(cfg.pixel_vqgan)))
    return str(save_pretrained(model, tmp_path_factory.mktemp("gen-tok") / "titok-debug"))


@pytest.fixture(scope="module")
def tokens(ray_local, sample_shards, tokenizer, tmp_path_factory) -> Path:
    """12 real JPEGs x 2 views (center-flip) tokenized by the tiny tokenizer."""
    shards, _ = sample_shards
    out = tmp_path_factory.mktemp("gen") / "tokens"
    assert tokenize(["--input", shards, "--output", str(out), "--tokenizer", tokenizer]) == 0
    return out


def submit(head, *job: str, timeout: int = ATTEMPT_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`ray job submit` of `python <job...>` to the head, from this checkout, as the README's commands send it."""
    cmd = ["ray", "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO), "--", "python", *job]
    return subprocess.run(cmd, env={**os.environ, **head.env}, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture(scope="module")
def generator_run(ray_head, tokens, tokenizer, tmp_path_factory) -> Path:
    """The debug recipe on 2 workers of a real head, a driver process as a user starts it: the last worker
    SIGKILLs itself at step KILL_AT of the first attempt (Ray Train restarts the group from step 20);
    once the restarted group has begun, the driver is killed with SIGKILL; then the same command is
    sent with `ray job submit` and finishes the run."""
    out = tmp_path_factory.mktemp("gen") / "run"
    # --batch-size 12: the whole 12-sequence dataset each step (6 per worker)
    job = ["jobs/train_generator.py", "--preset", "debug", "--data", str(tokens), "--output", str(out),
           "--tokenizer", tokenizer, "--num-workers", "2", "--batch-size", "12"]
    env = {**os.environ, **ray_head.env, FAIL_AT_STEP_ENV: str(KILL_AT)}
    proc = subprocess.Popen([sys.executable, *job], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    attempts, deadline = out / "attempts.jsonl", time.time() + ATTEMPT_TIMEOUT_S
    while proc.poll() is None and time.time() < deadline and \
            (not attempts.exists() or len(attempts.read_text().splitlines()) < 2):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(rows(attempts)) == 2 and not (out / "model").exists(), "killed while the restarted group trained"
    done = submit(ray_head, *job)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_training_lowers_the_loss_and_logs_what_a_user_watches(generator_run):
    logged = rows(generator_run / "metrics.jsonl")
    assert logged[-1]["loss"] < logged[0]["loss"] - 1.0
    assert logged[-1]["accuracy"] > logged[0]["accuracy"]
    assert {"loss", "accuracy", "lr", "grad_norm", "images_per_s", "epoch"} <= set(logged[-1])
    with open(generator_run / "metrics.csv") as f:
        assert f.readline().strip() == "step,epoch,loss,accuracy,lr,grad_norm,images_per_s"
    assert list((generator_run / "tensorboard").glob("events.out.tfevents.*"))
    grids = sorted(p.name for p in (generator_run / "images").glob("step_*.png"))
    assert grids == ["step_00000020.png", "step_00000040.png", "step_00000060.png"]


def test_a_killed_worker_restarts_and_a_kill_minus_9_rerun_continues_the_step_count(generator_run):
    first, restarted, rerun = rows(generator_run / "attempts.jsonl")
    assert first["resumed_from_step"] is None and restarted["resumed_from_step"] == 20  # the worker kill at 30
    assert rerun["resumed_from_step"] in (20, 40)  # the last checkpoint Ray Train registered before the kill -9
    assert [r["step"] for r in rows(generator_run / "metrics.jsonl")] == list(range(5, STEPS + 1, 5))  # none twice
    assert sorted(p.name for p in (generator_run / "checkpoints").glob("step_*")) == ["step_00000040", "step_00000060"]
    assert json.loads((generator_run / "model" / "config.json").read_text())["training"]["step"] == STEPS


def test_the_export_is_the_ema_generator_with_its_provenance(generator_run, tokens):
    model = load_model(generator_run / "model")
    assert isinstance(model, BertGenerator)
    assert model.config == dataclasses.replace(GENERATOR_PRESETS["debug"], label_dropout=0.1)
    state = torch.load(generator_run / "checkpoints" / f"step_{STEPS:08d}" / "state.pt", weights_only=True)
    ema = state["task"]["ema"]["module"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    training = json.loads((generator_run / "model" / "config.json").read_text())["training"]
    meta = json.loads(pq.read_schema(next(tokens.glob("*.parquet"))).metadata[b"titok"])
    assert training["step"] == STEPS and training["recipe"] == "debug/generator" and training["task"] == "generator"
    assert training["tokenizer_sha256"] == meta["tokenizer"]["weights_sha256"]


def test_bad_configurations_are_one_line_errors_before_any_worker(tokens, tokenizer, tmp_path, capsys):
    def error(*args) -> str:
        t0 = time.perf_counter()
        assert train_job(*args) == 2
        assert time.perf_counter() - t0 < 15  # no Ray Train worker was started
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    base = ["--preset", "debug", "--output", tmp_path / "out"]
    table = pq.read_table(next(tokens.glob("*.parquet")))
    meta = json.loads(table.schema.metadata[b"titok"])

    def variant(name: str, table=table, **changes) -> Path:
        d = tmp_path / name
        d.mkdir()
        new = {k: v for k, v in {**meta, **changes}.items() if v is not None}
        pq.write_table(table.replace_schema_metadata({b"titok": json.dumps(new).encode()}), d / "part.parquet")
        return d

    assert "does not exist" in error(*base, "--data", tmp_path / "nope")
    assert "is a proxy-code file" in error(*base, "--data", variant("proxy", teacher=meta["tokenizer"], tokenizer=None))
    assert "codebook size 512" in error(*base, "--data", variant("codebook", codebook_size=512))
    assert "tokens per image 64" in error(*base, "--data", variant("tokens", codes_per_view=64))
    assert "generator preset 'L-32' has 4096" in error("--preset", "L-32", "--output", tmp_path / "o", "--data", tokens)
    labels = table.set_column(table.schema.get_field_index("label"), "label", pa.array([5000] * table.num_rows, pa.int32()))
    assert "class labels 5000..5000" in error(*base, "--data", variant("labels", table=labels))
    torch.manual_seed(1)
    cfg = PRESETS["debug"]
    other = save_pretrained(TiTokReleased(cfg, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(cfg.pixel_vqgan))),
                            tmp_path / "other-tokenizer")
    assert "not the tokenizer that made" in error(*base, "--data", tokens, "--tokenizer", other)
    stage1 = save_pretrained(TiTok(cfg), tmp_path / "stage1")
    assert "not a TiTokReleased" in error(*base, "--data", tokens, "--tokenizer", stage1)
    assert "not divisible by --num-workers 5" in error(*base, "--data", tokens, "--num-workers", 5)


# ------------------------------------------------------------------------------------------------
# Sampling


def sample_job(*args) -> int:
    return sample([str(a) for a in args])


# 4 classes x 3 images, one class per chunk, 2 images per generate call; 0.5 CPU per actor, so two
# actors and the write tasks fit on 2 cores (and every actor runs 1 torch thread whatever --workers is).
SAMPLE_ARGS = ("--classes", "0-3", "--per-class", 3, "--classes-per-chunk", 1, "--batch-size", 2,
               "--cpus-per-worker", 0.5, "--write-cpus", 0.5)


@pytest.fixture(scope="module")
def samples(ray_head, generator_run, tmp_path_factory) -> Path:
    """The trained debug generator's samples on 2 workers of the head, sent with `ray job submit` (its
    tokenizer found through the model's record)."""
    out = tmp_path_factory.mktemp("samples") / "two-workers"
    done = submit(ray_head, "jobs/sample_generator.py", "--generator", str(generator_run / "model"), "--output",
                  str(out), "--workers", "2", *map(str, SAMPLE_ARGS))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    """Real ImageNet centre crops as the evaluation protocol makes them, (24, 3, 256, 256) uint8."""
    from pipelines.preprocess import CENTER, apply_view, decode_and_preprocess
    paths = sorted(SAMPLE.glob("*.JPEG"))[:24]
    return torch.from_numpy(np.stack([apply_view(decode_and_preprocess(p.read_bytes()), CENTER)
                                      for p in paths])).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def reference(crops, tmp_path_factory) -> Path:
    """Reference statistics of the real crops, in the file the evaluation job's --save-reference-stats writes."""
    from pipelines.evaluate.report import reference_bytes
    from titok_core.metrics import FeatureMoments
    moments = FeatureMoments.zeros(16)
    with torch.no_grad():
        moments.update(RandomFeatures()(crops))
    path = tmp_path_factory.mktemp("reference") / "real-random-features.npz"
    path.write_bytes(reference_bytes(moments, FeatureSpec.random()))
    return path


@pytest.fixture(scope="module")
def scored(ray_local, generator_run, reference, tmp_path_factory) -> Path:
    """The same samples on 1 worker in this process, with gFID / IS against `reference` (random features)."""
    out = tmp_path_factory.mktemp("samples") / "one-worker"
    assert sample_job("--generator", generator_run / "model", "--output", out, "--workers", 1, *SAMPLE_ARGS,
                      "--reference-stats", reference, "--random-features") == 0
    return out


def npz_of(out: Path) -> Path:
    (npz,) = out.glob("samples_*.npz")
    return npz


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_samples_are_pngs_chunk_files_and_the_adm_npz(samples, tokenizer):
    import pandas as pd
    npz = npz_of(samples)
    assert npz.name == "samples_12x256x256x3.npz"
    with np.load(npz) as z:
        assert z.files == ["arr_0", "arr_1"]
        images, labels = z["arr_0"], z["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (12, 256, 256, 3)  # NHWC, as the ADM evaluator reads
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # classes in order
    table = pd.read_parquet(samples / "tokens")
    assert sorted(table.key) == [f"{c:04d}_{i:04d}" for c in range(4) for i in range(3)]
    for image, row in zip(images, table.sort_values("key").itertuples()):
        assert row.file == f"images/{row.label:04d}/{row.label:04d}_{row.sample_index:04d}.png"
        assert np.array_equal(np.asarray(Image.open(samples / row.file)), image)
    # the images are the tokenizer's decoding of the stored tokens, truncated to uint8 as the official evaluation
    tok = load_model(tokenizer)
    first = table.sort_values("key").iloc[:2]
    with torch.no_grad():
        decoded = tok.decode_tokens(torch.tensor(np.stack(first.tokens.to_list()).astype(np.int64)), clamp=True)
    assert np.array_equal((decoded * 255).permute(0, 2, 3, 1).to(torch.uint8).numpy(), images[:2])
    summary = json.loads((samples / "_summary.json").read_text())
    assert summary["status"] == "ok" and summary["chunks_done"] == 4 and summary["images"] == 12
    assert summary["batch"]["paper_50k"] is False and "12 samples, not 50,000" in summary["batch"]["not_paper_50k"]
    assert summary["per_worker_images_per_s"] > 0


def test_sampling_is_deterministic_and_independent_of_the_worker_count(samples, scored, generator_run, tokenizer):
    assert npz_of(scored).read_bytes() == npz_of(samples).read_bytes()
    pngs = sorted(p.relative_to(samples) for p in samples.rglob("*.png"))
    assert len(pngs) == 12 and all((scored / p).read_bytes() == (samples / p).read_bytes() for p in pngs)
    # the seed decides: chunk 0 (class 0, 3 images) drawn by a model actor's code with seeds 42 and 7
    from pipelines.sample.model import SampleChunks
    from pipelines.sample.plan import Chunk
    config = json.loads((samples / "sample_config.json").read_text())
    threads = torch.get_num_threads()  # the actors' 1 thread (same float reductions), then this process's again
    try:
        tokens = {seed: SampleChunks(str(generator_run / "model"), tokenizer, config["sampling"], seed, 2,
                                     threads=1).sample(Chunk(0, (0,), 3)).tokens for seed in (42, 7)}
    finally:
        torch.set_num_threads(threads)
    stored = pq.read_table(samples / "tokens" / "chunk-000000.parquet").column("tokens").to_pylist()
    assert tokens[42].tolist() == stored
    assert tokens[7].tolist() != tokens[42].tolist()


def test_end_to_end_fid_and_inception_score_against_reference_statistics(scored, reference, crops):
    """shards -> tokens -> generator -> samples -> FID / IS, checked against the libraries on the npz."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torchmetrics.image.fid import FrechetInceptionDistance
    result = metrics_of(scored)
    m = result["metrics"]
    assert set(m) == {"fid_random_features", "is_random_features", "is_random_features_std"}, "never called gFID"
    with np.load(npz_of(scored)) as z:
        fake = torch.from_numpy(z["arr_0"]).permute(0, 3, 1, 2).contiguous()
    net = RandomFeatures()
    library = FrechetInceptionDistance(feature=net)
    library.update(crops, real=True)
    library.update(fake, real=False)
    assert m["fid_random_features"] == pytest.approx(float(library.compute()), rel=1e-5)
    with torch.no_grad():
        logits = net.logits(net(fake))
    # debug samples are nearly alike (a random tokenizer), so IS is 1 + 4e-11 here: compared to far below that
    # (the maths on well-spread logits: test_inception_score_splits_as_the_adm_evaluator)
    assert m["is_random_features"] == pytest.approx(isc_features_to_metric(logits, splits=1, shuffle=False)
                                                    ["inception_score_mean"], rel=0, abs=1e-13)
    assert result["images"] == 12 and result["inception_score_splits"]["splits"] == 1
    assert result["reference"] == {"kind": "saved evaluation statistics", "source": str(reference), "images": 24}
    assert result["comparable_with_paper"] is False and result["paper"] is None
    assert any("not gFID and IS" in n for n in result["notes"]) and any("50k" in n for n in result["notes"])
    assert result["chunks_measured_on_driver"] == 0  # the model actors measured every chunk
    summary = json.loads((scored / "_summary.json").read_text())
    assert summary["metrics"] == m
    assert summary["per_worker_images_per_s"] > 0 and summary["measure_images_per_s"] > 0


def test_a_rerun_redoes_only_uncommitted_chunks_and_scores_what_was_sampled_before(samples, scored, generator_run,
                                                                                    reference, tmp_path):
    """A run killed while writing chunk 2, rerun with --reference-stats: chunk 2 is sampled and measured by a
    model actor, the chunks sampled earlier (without statistics) are measured by the driver from their PNGs;
    the numbers are those of the run measured throughout."""
    import shutil
    out = tmp_path / "resumed"
    shutil.copytree(samples, out)
    before = npz_of(out).read_bytes()
    (out / "tokens" / "_success" / "chunk-000002.json").unlink()
    (out / "images" / "0002" / "0002_0001.png").unlink()
    npz_of(out).unlink()
    assert sample_job("--generator", generator_run / "model", "--output", out, *SAMPLE_ARGS,
                      "--reference-stats", reference, "--random-features") == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["chunks_done"], summary["chunks_skipped"]) == (1, 3)
    assert npz_of(out).read_bytes() == before
    result = metrics_of(out)
    assert result["chunks_measured_on_driver"] == 3
    for k, v in metrics_of(scored)["metrics"].items():
        assert result["metrics"][k] == pytest.approx(v, rel=1e-9), k
    mtime = npz_of(out).stat().st_mtime_ns
    assert sample_job("--generator", generator_run / "model", "--output", out, *SAMPLE_ARGS,
                      "--reference-stats", reference, "--random-features") == 0
    assert npz_of(out).stat().st_mtime_ns == mtime  # all chunks as before: the npz is kept
    assert metrics_of(out)["chunks_measured_on_driver"] == 0  # and the statistics measured before


def test_inception_score_splits_as_the_adm_evaluator():
    """Consecutive splits of `split_size` in batch order, whatever the batching; torch-fidelity without shuffling."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from titok_core.metrics import InceptionScore
    logits = torch.randn(12, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    score = InceptionScore(split_size=4)
    for part in (logits[:3], logits[3:9], logits[9:]):
        score.update(part)
    library = isc_features_to_metric(logits, splits=3, shuffle=False)
    mean, std = score.compute()
    assert [n for n, _, _ in score.splits] == [4, 4, 4]
    assert mean == pytest.approx(library["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(library["inception_score_std"], rel=1e-9)


def test_an_adm_reference_batch_is_read_for_inception_only(tmp_path):
    """mu / sigma of an ADM reference batch (its images are not read) against the Inception network."""
    from pipelines.evaluate.report import load_generation_reference
    mu = np.arange(2048, dtype=np.float64)
    np.savez(tmp_path / "VIRTUAL_imagenet256_labeled.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=mu,
             sigma=np.eye(2048), mu_s=np.zeros(2048), sigma_s=np.eye(2048))
    inception = FeatureSpec("inception", sha256="6726825d" + "0" * 56)
    ref = load_generation_reference(str(tmp_path / "VIRTUAL_imagenet256_labeled.npz"), inception)
    assert ref.adm and ref.n is None and np.array_equal(ref.mu, mu) and ref.sigma.shape == (2048, 2048)
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match="not statistics of 2048-d Inception pool features"):
        load_generation_reference(str(tmp_path / "small.npz"), inception)


def test_the_class_balance_check_refuses_to_call_a_batch_50k():
    from pipelines.sample.report import describe_batch
    full = np.repeat(np.arange(1000), 50)
    assert describe_batch(full, 1000)["paper_50k"] is True
    unbalanced = describe_batch(np.r_[full[:-1], 3], 1000)  # 50,000 images, class 999 one short, class 3 one over
    assert unbalanced["paper_50k"] is False and not unbalanced["balanced"]
    assert unbalanced["not_paper_50k"] == "unbalanced: 49 to 51 samples per class"
    fewer = describe_batch(full[:10_000], 1000)
    assert fewer["paper_50k"] is False and "10,000 samples, not 50,000" in fewer["not_paper_50k"]
    assert "800 of 1000 classes have no sample" in fewer["not_paper_50k"]


def test_sampling_one_line_errors(generator_run, tokenizer, samples, reference, tmp_path, capsys):
    def error(*args) -> str:
        assert sample_job(*args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    gen = ["--generator", generator_run / "model"]
    assert "--classes: label 1000 is outside" in error(*gen, "--output", tmp_path / "o", "--classes", "998-1000")
    assert "'x1' is not a class label" in error(*gen, "--output", tmp_path / "o", "--classes", "0,x1")
    cfg = PRESETS["debug"]
    small = dataclasses.replace(cfg, codebook_size=128)
    torch.manual_seed(0)
    other = save_pretrained(TiTokReleased(small, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(small.pixel_vqgan))),
                            tmp_path / "tok128")
    assert "codebook size 128" in error(*gen, "--output", tmp_path / "o", "--tokenizer", other)
    official_like = save_pretrained(build_generator(GENERATOR_PRESETS["debug"]), tmp_path / "untrained")
    assert "records no tokenizer: pass --tokenizer" in error("--generator", official_like, "--output", tmp_path / "o")
    assert "holds samples made with another seed" in error(*gen, "--output", samples, "--seed", 1, *SAMPLE_ARGS)
    # reference statistics that do not fit the run's feature network, and the options that need them
    out = ["--output", tmp_path / "o", *gen]
    assert "need --reference-stats" in error(*out, "--random-features")
    assert "--reference-stats" in error(*out, "--reference-stats", tmp_path / "none.npz", "--random-features")
    np.savez(tmp_path / "adm.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # an ADM reference batch's statistics
    assert "is an ADM reference batch (Inception statistics)" in error(*out, "--reference-stats", tmp_path / "adm.npz",
                                                                       "--random-features")
    with np.load(reference) as z:
        arrays = dict(z)
    other = json.dumps(FeatureSpec.random(seed=1).identity(), sort_keys=True)
    np.savez(tmp_path / "other-net.npz", **{**arrays, "features": np.array(other)})
    assert "another feature network" in error(*out, "--reference-stats", tmp_path / "other-net.npz", "--random-features")
    np.savez(tmp_path / "other-protocol.npz", **{**arrays, "protocol": np.array(json.dumps({"name": "v0"}))})
    assert "another evaluation protocol" in error(*out, "--reference-stats", tmp_path / "other-protocol.npz",
                                                  "--random-features")
    assert not (tmp_path / "o").exists()


