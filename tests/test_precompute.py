"""jobs/precompute_proxy.py end to end: real JPEGs packed by our shard writer, a tiny random teacher, a real local Ray."""

from __future__ import annotations

import io
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
import torch
from PIL import Image
from pipeline_fixtures import committed_shards, s3_with_shards

from jobs.precompute_proxy import main
from pipelines.encode.model import inference_layout
from pipelines.preprocess import View, apply_view
from titok_core import load_model

REPO = Path(__file__).resolve().parents[1]


def read_dataset(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out)


def job(*args: str) -> int:
    return main([str(a) for a in args])


def test_codes_are_the_teachers_codes_of_the_stored_pixels(ray_local, sample_shards, tiny_teacher, tmp_path, sample_labels):
    shards, n_images = sample_shards
    out = tmp_path / "proxy"
    assert job("--input", f"{shards}/train-{{000000..000002}}.tar", "--output", out, "--teacher", tiny_teacher,
               "--views", "offsets-2", "--batch-size", "5") == 0
    df = read_dataset(out)
    assert len(df) == n_images and df.key.is_unique
    assert {k: int(v) for k, v in zip(df.key, df.label)} == {k: sample_labels[k] for k in df.key}
    # the job's inference layout (channels-last): a random teacher has near-ties that layout can flip
    teacher = inference_layout(load_model(tiny_teacher), torch.device("cpu"))
    for row in df.itertuples():
        pixels = np.asarray(Image.open(io.BytesIO(row.image)))
        assert min(pixels.shape[:2]) == 256 and (row.height, row.width) == pixels.shape[:2]
        assert row.image_format == "png"
        assert list(row.view_flips) == [False, True, False, True]
        long_side = max(pixels.shape[:2])
        crops = []
        for offset, flip in zip(row.view_offsets, row.view_flips):
            assert 0 <= offset <= long_side - 256
            view = View(offset / (long_side - 256) if long_side > 256 else 0.5, bool(flip))
            crops.append(apply_view(pixels, view))
        expected = teacher.encode(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255)
        got = np.stack(row.proxy_codes).astype(np.int64)
        assert got.shape == (4, 256)
        np.testing.assert_array_equal(got, expected.numpy())
        assert row.source_shard.endswith(".tar") and row.source_member == f"{row.key}.jpg"
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"] == "ok" and summary["shards_done"] == 3 and summary["images"] == n_images
    assert summary["model"]["teacher"]["weights_sha256"]
    meta = json.loads(pq.read_schema(next(out.glob("*.parquet"))).metadata[b"titok"])
    assert meta["views"] == "offsets-2" and meta["codes_per_view"] == 256


def test_outputs_open_in_pandas_duckdb_and_hf_datasets(ray_local, sample_shards, tiny_teacher, tmp_path):
    import datasets
    import duckdb
    shards, n = sample_shards
    out = tmp_path / "proxy"
    assert job("--input", shards, "--output", out, "--teacher", tiny_teacher, "--views", "center") == 0
    assert len(pd.read_parquet(out)) == n
    assert duckdb.sql(f"select count(*), count(distinct key) from '{out}/*.parquet'").fetchall() == [(n, n)]
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == n and len(ds[0]["proxy_codes"][0]) == 256


def test_rerun_skips_committed_shards_and_overwrite_redoes_them(ray_local, sample_shards, tiny_teacher, tmp_path, capsys):
    shards, n = sample_shards
    out = tmp_path / "proxy"
    args = ["--input", shards, "--output", out, "--teacher", tiny_teacher]
    assert job(*args) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert job(*args) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["shards_done"], summary["shards_skipped"], summary["images_total"]) == (0, 3, n)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == stamps
    assert "3 skipped" in capsys.readouterr().out
    assert job(*args, "--overwrite") == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["shards_done"], summary["shards_skipped"]) == (3, 0)
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before  # deterministic output


def test_bf16_path_reports_agreement_with_fp32(ray_local, sample_shards, tiny_teacher, tmp_path):
    shards, _ = sample_shards
    out = tmp_path / "proxy"
    assert job("--input", f"{shards}/train-000000.tar", "--output", out, "--teacher", tiny_teacher,
               "--precision", "bf16") == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert 0.5 < summary["bf16_codes_agreeing_with_fp32"] <= 1.0


def test_bad_input_is_quarantined_and_good_samples_kept(ray_local, bad_corpus, tiny_teacher, tmp_path):
    shards, good_keys, expected_reasons = bad_corpus
    out = tmp_path / "proxy"
    # more than 5% bad: the job finishes every shard, then reports the error rate with exit 1
    assert job("--input", shards, "--output", out, "--teacher", tiny_teacher, "--num-classes", "1000") == 1
    df = read_dataset(out)
    assert sorted(df.key) == sorted(good_keys)
    errors = pd.read_parquet(out / "_errors")
    got = sorted(zip(errors.key, errors.reason))
    assert got == sorted(expected_reasons)
    assert all(errors.shard.str.endswith(".tar")) and all(errors.detail.str.len() > 0)
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"].startswith("failed: error rate")
    assert sum(summary["errors_by_reason"].values()) == len(expected_reasons)
    # a looser bound accepts the same data; committed shards are not redone
    assert job("--input", shards, "--output", out, "--teacher", tiny_teacher, "--max-error-rate", "0.9") == 0


def test_missing_teacher_and_bad_input_spec_are_one_line_errors(tmp_path, capsys, sample_shards):
    shards, _ = sample_shards
    assert job("--input", shards, "--output", tmp_path / "o", "--teacher", tmp_path / "nope.bin") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher" in err[0] and "nope.bin" in err[0]
    assert job("--input", f"{tmp_path}/none-*.tar", "--output", tmp_path / "o", "--teacher", tmp_path / "nope.bin") == 2


def test_offline_default_teacher_names_the_option(tmp_path, capsys, sample_shards, monkeypatch):
    shards, _ = sample_shards
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the default teacher is a Hub name: an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert job("--input", shards, "--output", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "--teacher" in err and "hf download fun-research/TiTok maskgit-vqgan-imagenet-f16-256.bin" in err


def test_kill_minus_9_and_rerun_gives_every_sample_exactly_once(ray_head, many_shards, tiny_teacher, tmp_path):
    shards, keys = many_shards
    out = tmp_path / "proxy"
    cmd = [sys.executable, str(REPO / "jobs" / "precompute_proxy.py"), "--input", str(shards), "--output", str(out),
           "--teacher", str(tiny_teacher), "--views", "offsets-3"]
    env = {**os.environ, **ray_head.env}
    for kill_after in (1, 4):  # two kills at different points, then a clean finish
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while committed_shards(out) < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert committed_shards(out) < len(list(Path(shards).glob("*.tar"))), "the job finished before it was killed"
        # what a reader of the directory sees is whole files (temporary files are dot-files it skips)
        visible = read_dataset(out) if list(out.glob("*.parquet")) else pd.DataFrame({"key": []})
        assert visible.key.is_unique and set(visible.key) <= set(keys)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = read_dataset(out)
    assert sorted(df.key) == sorted(keys)
    assert not [p for p in out.rglob("*.tmp")], "the rerun cleans up temporary files of killed runs"
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["shards_skipped"] >= 4 and summary["images_total"] == len(keys)


def test_input_and_output_on_s3(ray_local, s3_server, sample_shards, tiny_teacher, monkeypatch):
    shards, n = sample_shards
    fs, bucket = s3_with_shards(s3_server, shards, "imagenet")
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    out = f"s3://{bucket}/proxy/train"
    args = ["--input", f"s3://{bucket}/imagenet/train-{{000000..000002}}.tar", "--output", out,
            "--teacher", tiny_teacher, "--endpoint-url", s3_server.endpoint_url]
    assert job(*args) == 0
    files = sorted(fs.glob(f"{bucket}/proxy/train/*.parquet"))
    assert len(files) == 3 and len(fs.glob(f"{bucket}/proxy/train/_success/*.json")) == 3
    table = pq.read_table(files, filesystem=fs)
    assert table.num_rows == n and table.column("source_shard")[0].as_py().startswith("s3://")
    assert job(*args) == 0
    summary = json.loads(fs.cat_file(f"{bucket}/proxy/train/_summary.json"))
    assert summary["shards_skipped"] == 3


def test_ray_job_submit_to_a_local_head(ray_head, sample_shards, tiny_teacher, tmp_path):
    shards, n = sample_shards
    out = tmp_path / "proxy"
    cmd = ["ray", "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO), "--",
           "python", "jobs/precompute_proxy.py", "--input", str(shards), "--output", str(out),
           "--teacher", str(tiny_teacher)]
    proc = subprocess.run(cmd, env={**os.environ, **ray_head.env}, capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    assert len(read_dataset(out)) == n


def test_unreadable_shard_is_not_committed_and_is_retried(ray_local, sample_shards, tiny_teacher, tmp_path):
    shards, n = sample_shards
    tars = sorted(Path(shards).glob("*.tar"))
    late = tmp_path / "late-000000.tar"  # named in the list, but not there yet (e.g. still uploading)
    listing = tmp_path / "shards.txt"
    listing.write_text("\n".join([*map(str, tars), str(late)]) + "\n")
    out = tmp_path / "proxy"
    args = ["--input", listing, "--output", out, "--teacher", tiny_teacher, "--max-error-rate", "0.5"]
    assert job(*args) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["status"].startswith("ok, incomplete") and summary["shards_failed"] == 1
    assert "late-000000.tar" in summary["failed_shards"][0]
    assert summary["errors_by_reason"] == {"unreadable_shard": 1}
    assert not (out / "_success" / "late-000000.json").exists()
    late.write_bytes(tars[0].read_bytes())
    assert job(*args) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["shards_done"], summary["shards_skipped"], summary["status"]) == (1, 3, "ok")
    assert len(read_dataset(out)) == n + 4
