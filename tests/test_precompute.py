"""jobs/precompute_proxy.py end to end: real JPEGs packed by our shard writer, a tiny random teacher, a real local Ray."""

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
from pipeline_fixtures import committed_shards, s3_with_shards

from jobs.precompute_proxy import main
from pipelines.encode.job import format_summary
from pipelines.encode.model import inference_layout
from pipelines.preprocess import View, apply_view, decode_stored_image
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
        pixels = decode_stored_image(row.image)
        assert min(pixels.shape[:2]) == 256 and (row.height, row.width) == pixels.shape[:2]
        assert row.image_format == "zstd"  # the default: lossless, the fastest to read
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


def test_long_reason_names_stay_apart_from_their_counts_in_the_summary():
    summary = {"status": "ok", "shards_done": 1, "shards_skipped": 0, "shards_failed": 0, "images": 9,
               "images_total": 9, "errors_total": 15, "error_rate": 0.6, "images_per_s": 1.0, "wall_s": 9.0,
               "bytes_per_row": 1, "failed_shards": [], "output": "out",
               "errors_by_reason": {"decompression_bomb": 3, "junk_member": 12}}
    rows = [line.split() for line in format_summary(summary).splitlines() if line.startswith("  ")]
    assert rows == [["decompression_bomb", "3"], ["junk_member", "12"]]


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


def test_input_and_output_on_s3(ray_local, s3_server, sample_shards, tiny_teacher, monkeypatch, tmp_path):
    shards, n = sample_shards
    fs, bucket = s3_with_shards(s3_server, shards, "imagenet")
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    out = f"s3://{bucket}/proxy/train"
    fs.put_file(tiny_teacher, f"{bucket}/models/teacher.bin")
    teacher = f"s3://{bucket}/models/teacher.bin"
    monkeypatch.setenv("TITOK_CACHE", str(tmp_path / "cache"))
    args = ["--input", f"s3://{bucket}/imagenet/train-{{000000..000002}}.tar", "--output", out,
            "--teacher", teacher, "--endpoint-url", s3_server.endpoint_url]
    assert job(*args) == 0
    files = sorted(fs.glob(f"{bucket}/proxy/train/*.parquet"))
    assert len(files) == 3 and len(fs.glob(f"{bucket}/proxy/train/_success/*.json")) == 3
    table = pq.read_table(files, filesystem=fs)
    assert table.num_rows == n and table.column("source_shard")[0].as_py().startswith("s3://")
    # the dataset names its teacher as the user did (training on another machine fetches it from there)
    assert json.loads(table.schema.metadata[b"titok"])["teacher"]["source"] == teacher
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


def test_a_second_run_on_the_same_output_stops_with_one_line_until_the_first_is_gone(
        ray_head, many_shards, tiny_teacher, tmp_path):
    from pipelines.commit import OutputLease
    shards, keys = many_shards
    out = tmp_path / "proxy"
    cmd = [sys.executable, str(REPO / "jobs" / "precompute_proxy.py"), "--input", str(shards), "--output", str(out),
           "--teacher", str(tiny_teacher)]
    env = {**os.environ, **ray_head.env}
    with OutputLease(str(out), "encode"):  # a run in progress (this process) holds the output
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr[-2000:]
    assert "is being written by another run (encode on" in err[0] and f"pid {os.getpid()}" in err[0]
    assert committed_shards(out) == 0
    # a holder killed with kill -9 leaves its lease behind; on the same machine it is seen to be dead at once
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipelines.commit import OutputLease; "
                               f"OutputLease({str(out)!r}, 'encode').__enter__(); print('held', flush=True); "
                               "time.sleep(600)"], env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert json.loads((out / "_lease.json").read_text())["pid"] == holder.pid
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(read_dataset(out).key) == sorted(keys)
    assert not (out / "_lease.json").exists()


def test_a_lease_held_on_another_machine_blocks_until_it_expires(tmp_path, monkeypatch):
    from pipelines.commit import LEASE, OutputBusyError, OutputLease
    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE).write_text(json.dumps({"run_id": "x", "job": "encode", "host": "gpu-node-7", "pid": 42,
                                         "pid_started": 1, "started_at": time.time(), "renewed_at": time.time(),
                                         "ttl_s": 2.0}))
    with pytest.raises(OutputBusyError, match=r"encode on gpu-node-7, pid 42.*within [0-9]+ s"):
        with OutputLease(str(out), "encode"):
            pass
    time.sleep(2.2)
    monkeypatch.setenv("TITOK_LEASE_TTL_S", "1")
    with OutputLease(str(out), "encode") as lease:
        held = json.loads((out / LEASE).read_text())
        assert held["run_id"] == lease.record["run_id"] and held["ttl_s"] == 1.0
        time.sleep(1.2)  # renewed every ttl / 3 while held
        assert json.loads((out / LEASE).read_text())["renewed_at"] > held["renewed_at"]
    assert not (out / LEASE).exists()


def test_an_object_store_outage_is_one_line_and_a_rerun_completes(ray_head, many_shards, tiny_teacher, tmp_path):
    from s3_server import RestartableS3Server
    shards, keys = many_shards
    with RestartableS3Server(tmp_path / "s3") as store:
        bucket = store.server.create_bucket()
        env = {**os.environ, **ray_head.env, **store.server.env}
        cmd = [sys.executable, str(REPO / "jobs" / "precompute_proxy.py"), "--input", str(shards),
               "--output", f"s3://{bucket}/proxy", "--teacher", str(tiny_teacher)]
        job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def committed() -> int:
            listing = store.server.client().list_objects_v2(Bucket=bucket, Prefix="proxy/_success/")
            return listing.get("KeyCount", 0)

        deadline = time.time() + 120
        while committed() < 2 and job.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        store.stop()  # the outage
        stdout, stderr = job.communicate(timeout=300)
        assert job.returncode == 1, stderr[-3000:]
        last = stdout.strip().splitlines()[-1]
        assert last.startswith("error: storage unreachable or failing at http://127.0.0.1:"), stdout[-2000:]
        assert "shards committed; rerun the same command to resume" in last
        assert "Traceback" not in stdout + stderr
        store.start()  # the store is back, its data intact: the same command finishes the job
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        import fsspec
        fs = fsspec.filesystem("s3", key=store.server.access_key, secret=store.server.secret_key,
                               client_kwargs={"endpoint_url": store.server.endpoint_url})
        df = pd.concat(pd.read_parquet(fs.open(p)) for p in fs.glob(f"{bucket}/proxy/*.parquet"))
        assert sorted(df.key) == sorted(keys)
        summary = json.loads(fs.cat_file(f"{bucket}/proxy/_summary.json"))
        assert summary["shards_skipped"] >= 1 and summary["images_total"] == len(keys)


def test_a_rerun_with_other_settings_does_not_mix_two_datasets(ray_local, sample_shards, tiny_teacher, tmp_path,
                                                               capsys):
    shards, _ = sample_shards
    out = tmp_path / "proxy"
    args = ["--input", f"{shards}/train-000000.tar", "--output", out, "--teacher", tiny_teacher]
    assert job(*args) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    capsys.readouterr()
    assert job(*args, "--views", "center-flip") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a dataset with another views" in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    assert job(*args, "--views", "center-flip", "--overwrite") == 0
    assert all(len(v) == 2 for v in read_dataset(out).view_flips)
