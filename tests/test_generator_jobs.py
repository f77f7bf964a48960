"""jobs/train_generator.py and jobs/sample_generator.py end to end: real JPEGs -> tokens (tiny random
TiTok) -> a debug generator on 2 Ray Train workers (a worker killed mid-run; the driver killed with
kill -9 and rerun) -> samples (deterministic, any worker count, the ADM npz) -> FID; one-line errors;
`ray job submit` of both jobs to a real local head."""

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
STEPS = GENERATOR_RECIPES["debug"].max_steps  # 60; checkpoints every 20
KILL_AT = 30  # between the checkpoints at 20 and 40: the restart redoes 21..30


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


@pytest.fixture(scope="module")
def generator_run(tokens, tokenizer, tmp_path_factory) -> Path:
    """The debug recipe on 2 workers; the last worker SIGKILLs itself at step KILL_AT of the first attempt."""
    out = tmp_path_factory.mktemp("gen") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv(FAIL_AT_STEP_ENV, str(KILL_AT))
    try:
        # --batch-size 12: the whole 12-sequence dataset each step (6 per worker)
        assert train_job("--preset", "debug", "--data", tokens, "--output", out, "--tokenizer", tokenizer,
                         "--num-workers", 2, "--batch-size", 12) == 0
    finally:
        mp.undo()
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


def test_a_killed_worker_restarts_from_the_last_checkpoint(generator_run):
    assert [a["resumed_from_step"] for a in rows(generator_run / "attempts.jsonl")] == [None, 20]
    assert [r["step"] for r in rows(generator_run / "metrics.jsonl")] == list(range(5, STEPS + 1, 5))
    assert sorted(p.name for p in (generator_run / "checkpoints").glob("step_*")) == ["step_00000040", "step_00000060"]


def test_the_export_is_the_ema_generator_with_its_provenance(generator_run, tokens):
    model = load_model(generator_run / "model")
    assert isinstance(model, BertGenerator)
    assert model.config == dataclasses.replace(GENERATOR_PRESETS["debug"], label_dropout=0.1)
    state = torch.load(generator_run / "checkpoints" / f"step_{STEPS:08d}" / "state.pt", weights_only=False)
    ema = state["task"]["ema"]["module"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    training = json.loads((generator_run / "model" / "config.json").read_text())["training"]
    meta = json.loads(pq.read_schema(next(tokens.glob("*.parquet"))).metadata[b"titok"])
    assert training["step"] == STEPS and training["recipe"] == "debug/generator" and training["task"] == "generator"
    assert training["tokenizer_sha256"] == meta["tokenizer"]["weights_sha256"]


def test_rerun_after_kill_minus_9_continues_the_step_count(ray_head, tokens, tmp_path):
    """The driver killed with SIGKILL once Ray Train has registered a checkpoint; the same command resumes."""
    out = tmp_path / "run"
    steps = 120  # checkpoints every 20 steps, about 1 s each on 2 cores: time to kill between them
    cmd = [sys.executable, str(REPO / "jobs" / "train_generator.py"), "--preset", "debug", "--data", str(tokens),
           "--output", str(out), "--num-workers", "2", "--batch-size", "12", "--steps", str(steps)]
    env = {**os.environ, **ray_head.env}
    registered = out / "checkpoints" / "checkpoint_manager_snapshot.json"  # Ray Train's record of its checkpoints
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not registered.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "killed before the end"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = rows(out / "attempts.jsonl")[-1]["resumed_from_step"]
    assert resumed is not None and 0 < resumed < steps
    logged = [r["step"] for r in rows(out / "metrics.jsonl")]
    assert logged == list(range(5, steps + 1, 5))  # nothing lost, nothing logged twice
    assert json.loads((out / "model" / "config.json").read_text())["training"]["step"] == steps


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
def samples(ray_local, generator_run, tmp_path_factory) -> Path:
    """The trained debug generator's samples with 2 workers (its tokenizer found through the model's record)."""
    out = tmp_path_factory.mktemp("samples") / "two-workers"
    assert sample_job("--generator", generator_run / "model", "--output", out, "--workers", 2, *SAMPLE_ARGS) == 0
    return out


def npz_of(out: Path) -> Path:
    (npz,) = out.glob("samples_*.npz")
    return npz


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


def test_sampling_is_deterministic_and_independent_of_the_worker_count(samples, generator_run, tmp_path):
    one = tmp_path / "one-worker"
    assert sample_job("--generator", generator_run / "model", "--output", one, "--workers", 1, *SAMPLE_ARGS) == 0
    assert npz_of(one).read_bytes() == npz_of(samples).read_bytes()
    pngs = sorted(p.relative_to(samples) for p in samples.rglob("*.png"))
    assert len(pngs) == 12 and all((one / p).read_bytes() == (samples / p).read_bytes() for p in pngs)
    other = tmp_path / "other-seed"
    assert sample_job("--generator", generator_run / "model", "--output", other, "--seed", 7, *SAMPLE_ARGS) == 0
    with np.load(npz_of(other)) as a, np.load(npz_of(samples)) as b:
        assert not np.array_equal(a["arr_0"], b["arr_0"])


def test_a_rerun_redoes_only_uncommitted_chunks_and_rewrites_the_same_npz(samples, generator_run, tmp_path):
    import shutil
    out = tmp_path / "resumed"
    shutil.copytree(samples, out)
    before = npz_of(out).read_bytes()
    # what a run killed while writing chunk 2 leaves: no success record, some of its files
    (out / "tokens" / "_success" / "chunk-000002.json").unlink()
    (out / "images" / "0002" / "0002_0001.png").unlink()
    npz_of(out).unlink()
    assert sample_job("--generator", generator_run / "model", "--output", out, *SAMPLE_ARGS) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["chunks_done"], summary["chunks_skipped"]) == (1, 3)
    assert npz_of(out).read_bytes() == before
    mtime = npz_of(out).stat().st_mtime_ns
    assert sample_job("--generator", generator_run / "model", "--output", out, *SAMPLE_ARGS) == 0
    assert npz_of(out).stat().st_mtime_ns == mtime  # all chunks as before: the npz is kept


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


def test_sampling_one_line_errors(generator_run, tokenizer, samples, tmp_path, capsys):
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


def test_ray_job_submit_to_a_local_head(ray_head, tokens, tmp_path):
    """Both jobs sent to a real head with `ray job submit`, as the README's cluster commands send them."""
    env = {**os.environ, **ray_head.env}
    submit = ["ray", "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO), "--", "python"]
    run, out = tmp_path / "run", tmp_path / "samples"
    for job in (["jobs/train_generator.py", "--preset", "debug", "--data", str(tokens), "--output", str(run),
                 "--steps", "10"],
                ["jobs/sample_generator.py", "--generator", str(run / "model"), "--output", str(out),
                 "--classes", "5,7", "--per-class", "2"]):
        proc = subprocess.run(submit + job, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((run / "model" / "config.json").read_text())["training"]["step"] == 10
    with np.load(npz_of(out)) as z:
        assert z["arr_0"].shape == (4, 256, 256, 3) and z["arr_1"].tolist() == [5, 5, 7, 7]
