"""jobs/tokenize_dataset.py end to end: real JPEGs, a tiny random TiTok, a real local Ray / head / S3."""

from __future__ import annotations

import json
import os
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
from pipeline_fixtures import committed_shards, s3_with_shards, settled_commits

from jobs.precompute_proxy import main as precompute
from jobs.tokenize_dataset import main
from pipelines.preprocess import View, apply_view, decode_and_preprocess, decode_stored_image
from pipelines.shards import collect_images
from titok_core import PRESETS, MaskGITVQGAN, ProxyPixelDecoder, TiTok, TiTokReleased, load_model, save_pretrained

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"


def job(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> str:
    """A random debug-size TiTok in its released form, saved in our format (a directory)."""
    torch.manual_seed(0)
    cfg = PRESETS["debug"]
    model = TiTokReleased(cfg, pixel=ProxyPixelDecoder.from_teacher(MaskGITVQGAN(cfg.pixel_vqgan)))
    return str(save_pretrained(model, tmp_path_factory.mktemp("tok") / "titok-debug"))


def encode(model, crops: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model.encode(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255).numpy()


def test_tokens_are_the_tokenizers_tokens_of_the_crops(ray_local, sample_shards, tiny_tokenizer, tmp_path,
                                                       sample_labels):
    shards, n = sample_shards
    out = tmp_path / "tokens"
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer) == 0
    df = pd.read_parquet(out)
    assert len(df) == n and df.key.is_unique
    assert "image" not in df.columns
    model = load_model(tiny_tokenizer)
    paths = {im.key: im.path for im in collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))}
    for row in df.itertuples():
        assert row.label == sample_labels[row.key]
        base = decode_and_preprocess(Path(paths[row.key]).read_bytes())
        crops = [apply_view(base, View(0.5, False)), apply_view(base, View(0.5, True))]  # default: center-flip
        assert list(row.view_flips) == [False, True]
        np.testing.assert_array_equal(np.stack(row.tokens).astype(np.int64), encode(model, crops))
    meta = json.loads(pq.read_schema(next(out.glob("*.parquet"))).metadata[b"titok"])
    summary = json.loads((out / "_summary.json").read_text())
    assert meta["tokenizer"]["weights_sha256"] == summary["model"]["tokenizer"]["weights_sha256"]
    assert meta["tokenizer"]["config"]["num_latent_tokens"] == 32 and meta["codes_per_view"] == 32


def test_proxy_dataset_input_uses_the_stored_pixels(ray_local, sample_shards, tiny_teacher, tiny_tokenizer, tmp_path):
    shards, n = sample_shards
    proxy = tmp_path / "proxy"
    assert precompute(["--input", shards, "--output", str(proxy), "--teacher", tiny_teacher]) == 0
    out = tmp_path / "tokens"
    assert job("--input", proxy, "--output", out, "--tokenizer", tiny_tokenizer, "--views", "center") == 0
    tokens = pd.read_parquet(out).set_index("key")
    stored = pd.read_parquet(proxy).set_index("key")
    assert sorted(tokens.index) == sorted(stored.index) and len(tokens) == n
    model = load_model(tiny_tokenizer)
    for key, row in stored.iterrows():
        pixels = decode_stored_image(row.image)
        got = np.stack(tokens.loc[key, "tokens"]).astype(np.int64)
        np.testing.assert_array_equal(got, encode(model, [apply_view(pixels, View(0.5, False))]))
        assert tokens.loc[key, "source_shard"] == row.source_shard and tokens.loc[key, "label"] == row.label
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(p.name for p in proxy.glob("*.parquet"))


def test_verify_fraction_reports_psnr(ray_local, sample_shards, tiny_tokenizer, tmp_path, capsys):
    shards, n = sample_shards
    out = tmp_path / "tokens"
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer, "--verify-fraction", "1") == 0
    verify = json.loads((out / "_summary.json").read_text())["verify"]
    assert verify["images"] == n and 0 < verify["psnr_db"] < 60
    assert "PSNR" in capsys.readouterr().out


def test_stage1_tokenizer_cannot_verify_and_other_one_line_errors(tmp_path, sample_shards, capsys):
    shards, _ = sample_shards
    stage1 = save_pretrained(TiTok(PRESETS["debug"]), tmp_path / "stage1")
    assert job("--input", shards, "--output", tmp_path / "o", "--tokenizer", stage1, "--verify-fraction", "0.1") == 2
    assert job("--input", shards, "--output", tmp_path / "o", "--tokenizer", stage1, "--resolution", "128") == 2
    assert job("--input", shards, "--output", tmp_path / "o", "--tokenizer", tmp_path / "missing") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "stage-1" in err[0] and "image size 256" in err[1] and "--tokenizer" in err[2]


def test_bad_input_is_quarantined(ray_local, bad_corpus, tiny_tokenizer, tmp_path):
    shards, good, reasons = bad_corpus
    out = tmp_path / "tokens"
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer, "--max-error-rate", "1") == 0
    assert sorted(pd.read_parquet(out).key) == sorted(good)
    errors = pd.read_parquet(out / "_errors")
    assert sorted(zip(errors.key, errors.reason)) == sorted(reasons)


def test_outputs_feed_a_generator_loop(ray_local, sample_shards, tiny_tokenizer, tmp_path):
    """The README's example: HF datasets -> torch DataLoader -> (B, N) token batches."""
    import datasets
    import duckdb
    shards, n = sample_shards
    out = tmp_path / "tokens"
    assert job("--input", shards, "--output", out, "--tokenizer", tiny_tokenizer) == 0
    assert duckdb.sql(f"select count(*) from '{out}/*.parquet'").fetchall() == [(n,)]
    ds = datasets.load_dataset("parquet", data_files=f"{out}/*.parquet", split="train",
                               cache_dir=str(tmp_path / "hf")).with_format("torch", columns=["tokens", "label"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["tokens"].shape == (4, 2, 32) and batch["label"].shape == (4,)
    assert int(batch["tokens"].max()) < PRESETS["debug"].codebook_size


def test_kill_minus_9_and_rerun_gives_every_sample_exactly_once(ray_head, many_shards, tiny_tokenizer, tmp_path):
    shards, keys = many_shards
    out = tmp_path / "tokens"
    cmd = [sys.executable, str(REPO / "jobs" / "tokenize_dataset.py"), "--input", shards, "--output", str(out),
           "--tokenizer", tiny_tokenizer, "--views", "offsets-3"]
    env = {**os.environ, **ray_head.env}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while committed_shards(out) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = settled_commits(out)  # a shard being committed at the kill may still land
    assert 1 <= committed < 10, "killed between the first and the last commit"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_parquet(out)
    assert sorted(df.key) == sorted(keys)
    assert json.loads((out / "_summary.json").read_text())["shards_skipped"] == committed


def test_s3_round_trip(ray_local, s3_server, sample_shards, tiny_tokenizer, monkeypatch):
    shards, n = sample_shards
    fs, bucket = s3_with_shards(s3_server, shards, "in")
    for f in Path(tiny_tokenizer).iterdir():
        fs.put_file(str(f), f"{bucket}/models/titok-debug/{f.name}")
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TITOK_CACHE", str(Path(shards).parent / "s3-cache"))
    out = f"s3://{bucket}/tokens/train"
    assert job("--input", f"s3://{bucket}/in", "--output", out, "--tokenizer", f"s3://{bucket}/models/titok-debug",
               "--endpoint-url", s3_server.endpoint_url) == 0
    table = pq.read_table(sorted(fs.glob(f"{bucket}/tokens/train/*.parquet")), filesystem=fs)
    assert table.num_rows == n and table.schema.field("tokens").type.value_type.list_size == 32


def test_ray_job_submit_to_a_local_head(ray_head, sample_shards, tiny_tokenizer, tmp_path):
    shards, n = sample_shards
    out = tmp_path / "tokens"
    cmd = ["ray", "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO), "--",
           "python", "jobs/tokenize_dataset.py", "--input", shards, "--output", str(out), "--tokenizer", tiny_tokenizer]
    proc = subprocess.run(cmd, env={**os.environ, **ray_head.env}, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(pd.read_parquet(out)) == n
