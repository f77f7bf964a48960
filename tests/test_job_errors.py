"""A user's mistakes are one `error:` line naming the thing and the fix, exit 2, nothing written, and
found before Ray starts or anything is downloaded: bad outputs, numbers out of range, a bad view set,
the wrong kind of dataset, broken checkpoints, proxy codes outside the teacher's codebook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.evaluate_tokenizer import main as evaluate
from jobs.make_shards import main as make_shards
from jobs.precompute_proxy import main as precompute
from jobs.sample_generator import main as sample_generator
from jobs.tokenize_dataset import main as tokenize
from jobs.train_generator import main as train_generator
from jobs.train_tokenizer import main as train
from pipelines import runtime, schema, storage
from pipelines.commit import commit_shard
from pipelines.encode.write import shard_table
from pipelines.preprocess import view_specs
from pipelines.train.data import DatasetError, ViewSampler
from titok_core import PRESETS, TiTok, TiTokReleased, save_pretrained

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"


@pytest.fixture(autouse=True)
def no_ray_no_downloads(monkeypatch):
    """Every case here must fail before Ray starts and before anything is downloaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a user error must be found before this")
    monkeypatch.setattr(runtime, "init_ray", refuse)
    monkeypatch.setattr(storage, "_download", refuse)


@pytest.fixture(scope="module")
def tiny_stage1(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return str(save_pretrained(TiTok(PRESETS["debug"]), tmp_path_factory.mktemp("tok") / "stage1"))


@pytest.fixture(scope="module")
def tiny_released(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return str(save_pretrained(TiTokReleased(PRESETS["debug"]), tmp_path_factory.mktemp("tok") / "released"))


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(("error:", "make_shards: error:")), err
    for needle in needles:
        assert needle in err, err
    return err


def shards_dir(tmp_path: Path) -> str:
    """A folder of real shards (2 JPEGs), written by make_shards itself."""
    out = tmp_path / "shards"
    images = sorted(SAMPLE.glob("*.JPEG"))[:2]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\t{i}\n" for i, p in enumerate(images)))
    assert make_shards([str(lst), "--output", str(out)]) == 0
    return str(out)


# Each job's command with OUT where --output goes (every input is valid; the output is the mistake).
def commands(tmp_path: Path, tiny_teacher: str, stage1: str, released: str = "") -> dict:
    shards = shards_dir(tmp_path)
    return {
        "make_shards": (make_shards, [str(SAMPLE), "--labels", str(SAMPLE / "labels.tsv"), "--output", "OUT"]),
        "precompute_proxy": (precompute, ["--input", shards, "--teacher", tiny_teacher, "--output", "OUT"]),
        "tokenize_dataset": (tokenize, ["--input", shards, "--tokenizer", stage1, "--output", "OUT"]),
        "train_tokenizer": (train, ["--stage", "1", "--preset", "debug", "--data", shards, "--output", "OUT"]),
        "evaluate_tokenizer": (evaluate, ["--input", shards, "--tokenizer", released, "--random-features", "--no-lpips",
                                          "--output", "OUT"]),
        "train_generator": (train_generator, ["--preset", "debug", "--data", shards, "--output", "OUT"]),
        "sample_generator": (sample_generator, ["--generator", str(tmp_path / "generator"), "--output", "OUT"]),
    }


JOBS = ["make_shards", "precompute_proxy", "tokenize_dataset", "train_tokenizer", "evaluate_tokenizer",
        "train_generator", "sample_generator"]


@pytest.mark.parametrize("job", JOBS)
def test_an_output_no_job_could_write_is_one_line_before_anything_runs(job, tmp_path, tiny_teacher, tiny_stage1,
                                                                       tiny_released, capsys):
    main, argv = commands(tmp_path, tiny_teacher, tiny_stage1, tiny_released)[job]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    capsys.readouterr()
    for output, needle in [(a_file, "is a file"), (a_file / "sub", "which is a file"),
                           ("/proc/titok-out", "pseudo filesystem"), ("/sys/kernel/titok-out", "pseudo filesystem")]:
        assert main([str(output) if a == "OUT" else a for a in argv]) == 2
        one_line_error(capsys, "--output", needle)
    assert a_file.read_text() == "not a directory"


def test_a_read_only_output_is_one_line_in_every_job(tmp_path, tiny_teacher, tiny_stage1, tiny_released):
    """A read-only filesystem (a tmpfs mounted ro in a private mount namespace): each job as a user runs it."""
    cmds = commands(tmp_path, tiny_teacher, tiny_stage1, tiny_released)
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"mount -t tmpfs -o ro tmpfs {ro} || exit 97"
    for job in JOBS:
        args = " ".join(f"'{ro}/out'" if a == "OUT" else f"'{a}'" for a in cmds[job][1])
        script += f"; {sys.executable} jobs/{job}.py {args} 2>{tmp_path}/{job}.err; echo $? > {tmp_path}/{job}.rc"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for job in JOBS:
        err = (tmp_path / f"{job}.err").read_text().strip().splitlines()
        assert (tmp_path / f"{job}.rc").read_text().strip() == "2", (job, err)
        assert len(err) == 1 and "read-only filesystem" in err[0] and "--output" in err[0], (job, err)


@pytest.mark.parametrize("job,args,needle", [
    ("precompute_proxy", ["--resolution", "0"], "--resolution: 0 is not a positive integer"),
    ("precompute_proxy", ["--cpus-per-worker", "0"], "--cpus-per-worker: 0 is not a positive number"),
    ("precompute_proxy", ["--batch-size", "-8"], "--batch-size: -8 is not a positive integer"),
    ("precompute_proxy", ["--workers", "0"], "--workers: 0 is not a positive integer"),
    ("precompute_proxy", ["--max-error-rate", "2"], "--max-error-rate: 2 is not a fraction in [0, 1]"),
    ("precompute_proxy", ["--num-gpus", "-1"], "--num-gpus: -1 is not a number >= 0"),
    ("precompute_proxy", ["--max-aspect-ratio", "0.5"], "--max-aspect-ratio: 0.5 is below 1"),
    ("tokenize_dataset", ["--verify-fraction", "1.5"], "--verify-fraction: 1.5 is not a fraction in [0, 1]"),
    ("tokenize_dataset", ["--threads", "0"], "--threads: 0 is not a positive integer"),
    ("train_tokenizer", ["--num-workers", "0"], "--num-workers: 0 is not a positive integer"),
    ("train_tokenizer", ["--cpus-per-worker", "0"], "--cpus-per-worker: 0 is not a positive number"),
    ("train_tokenizer", ["--steps", "0"], "--steps: 0 is not a positive integer"),
    ("train_generator", ["--steps", "0"], "--steps: 0 is not a positive integer"),
    ("sample_generator", ["--per-class", "0"], "--per-class: 0 is not a positive integer"),
    ("sample_generator", ["--cpus-per-worker", "-1"], "--cpus-per-worker: -1 is not a positive number"),
    ("make_shards", ["--samples-per-shard", "nan"], "--samples-per-shard: 'nan' is not a positive integer"),
])
def test_numbers_out_of_range_are_one_line(job, args, needle, tmp_path, tiny_teacher, tiny_stage1, capsys):
    main, argv = commands(tmp_path, tiny_teacher, tiny_stage1)[job]
    capsys.readouterr()
    out = tmp_path / "out"
    assert main([str(out) if a == "OUT" else a for a in argv] + args) == 2
    one_line_error(capsys, needle, "--help")
    assert not out.exists()


def test_a_bad_view_set_is_reported_as_such_not_as_a_failed_download(tmp_path, capsys):
    """The default teacher is a URL; a typo in --views must be found before anything fetches it."""
    assert precompute(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--views", "ofsets-4"]) == 2
    one_line_error(capsys, "--views", "unknown view set 'ofsets-4'", "offsets-K")


def token_dataset(directory: Path) -> Path:
    """A token dataset file as tokenize_dataset.py writes it (one row, the commit protocol)."""
    meta = schema.DatasetMetadata(
        views="center", view_specs=tuple(view_specs("center")), crop_size=256, codes_per_view=32,
        tokenizer=schema.ModelIdentity("TiTok", PRESETS["debug"].to_dict(), "0" * 64, "tok"), codebook_size=256)
    shard = schema.EncodedShard("in.tar", "train-000000", ["k"], [1], ["in.tar"], ["k.jpg"], [b""], [256], [256], [],
                                False, np.zeros((1, 1, 32), np.uint16), np.zeros((1, 1), np.int32), [False])
    commit_shard(str(directory), "train-000000", "in.tar", shard_table(shard, meta), [], {}, None)
    return directory


def test_the_wrong_kind_of_dataset_is_one_line(tmp_path, tiny_stage1, capsys):
    tokens = token_dataset(tmp_path / "tokens")
    assert tokenize(["--input", str(tokens), "--output", str(tmp_path / "out"), "--tokenizer", tiny_stage1]) == 2
    one_line_error(capsys, "is a token dataset", "precompute_proxy.py")
    assert train(["--stage", "1", "--preset", "debug", "--data", str(tokens), "--output", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "token dataset file", "precompute_proxy.py")
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    assert not (tokens / "_summary.json").exists()


def proxy_dataset_with_codes(directory: Path, max_code: int, statistics: bool) -> Path:
    """One proxy-dataset file whose codes reach `max_code` (the teacher's codebook has 1024 entries)."""
    import io

    from PIL import Image
    image = io.BytesIO()
    Image.new("RGB", (256, 256)).save(image, format="PNG")
    meta = schema.DatasetMetadata(
        views="center", view_specs=tuple(view_specs("center")), crop_size=256, codes_per_view=256,
        image_format="png", teacher=schema.ModelIdentity("MaskGITVQGAN", PRESETS["debug"].pixel_vqgan.to_dict(),
                                                         "0" * 64, "teacher"), proxy_codebook_size=1024)
    codes = np.zeros((2, 1, 256), np.uint16)
    codes[1, 0, 7] = max_code
    shard = schema.EncodedShard("in.tar", "train-000000", ["a", "b"], [0, 1], ["in.tar"] * 2, ["a.jpg", "b.jpg"],
                                [image.getvalue()] * 2, [256, 256], [256, 256], [], False, codes,
                                np.zeros((2, 1), np.int32), [False])
    table = shard_table(shard, meta)
    directory.mkdir(parents=True)
    pq.write_table(table, directory / "train-000000.parquet", write_statistics=statistics)
    return directory


def test_proxy_codes_outside_the_codebook_stop_training_before_it_starts(tmp_path, capsys):
    data = proxy_dataset_with_codes(tmp_path / "proxy", 5000, statistics=True)
    out = tmp_path / "run"
    assert train(["--stage", "1", "--preset", "debug", "--data", str(data), "--output", str(out),
                  "--batch-size", "2", "--teacher", str(tmp_path)]) == 2
    one_line_error(capsys, "train-000000.parquet", "0..5000", "[0, 1024)")
    assert not out.exists()


def test_without_statistics_the_reader_names_the_file_and_key(tmp_path):
    data = proxy_dataset_with_codes(tmp_path / "proxy", 4096, statistics=False)
    table = pq.read_table(data / "train-000000.parquet")
    batch = {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in table.column_names}
    batch[schema.SOURCE_FILE] = np.asarray([str(data / "train-000000.parquet")] * 2, dtype=object)
    assert ViewSampler(0, 256, codebook_size=1024)({k: v[:1] for k, v in batch.items()}, 0)["codes"].max() == 0
    with pytest.raises(DatasetError, match=r"train-000000.parquet, sample b: proxy code 4096 .*\[0, 1024\)"):
        ViewSampler(0, 256, codebook_size=1024)(batch, 0)


@pytest.mark.parametrize("config,needle", [
    ("[1, 2]", "must hold a JSON object, not a list"),
    ('{"kind": "titok"}', "'config' must be an object"),
    ('{"kind": "titok", "config": {"enc_width": "wide"}}', "TiTokConfig.enc_width must be an integer, got 'wide'"),
    ('{"kind": "titok", "config": {"enc_layers": 10000000}}', "enc_layers = 10000000 is outside the supported range"),
    ('{"kind": "titok", "config": {"dec_width": 1099511627776}}', "dec_width = 1099511627776 is outside"),
    ('{"kind": "titok", "config": {', "config.json is not valid JSON (Expecting"),
])
def test_a_broken_checkpoint_config_is_one_line_naming_the_file(config, needle, tmp_path, tiny_stage1, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes((Path(tiny_stage1) / "model.safetensors").read_bytes())
    (ckpt / "config.json").write_text(config)
    assert tokenize(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--tokenizer", str(ckpt)]) == 2
    one_line_error(capsys, "--tokenizer", str(ckpt), needle)


@pytest.mark.parametrize("damage,needle", [
    (lambda b: b"garbage" * 100, "is not a safetensors file"),
    (lambda b: b[: len(b) // 2], "is damaged"),
])
def test_a_broken_weights_file_is_one_line(damage, needle, tmp_path, tiny_stage1, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((Path(tiny_stage1) / "config.json").read_text())
    (ckpt / "model.safetensors").write_bytes(damage((Path(tiny_stage1) / "model.safetensors").read_bytes()))
    assert tokenize(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--tokenizer", str(ckpt)]) == 2
    one_line_error(capsys, "model.safetensors", needle)


def test_a_config_that_does_not_fit_its_weights_names_the_parameter_count(tmp_path, tiny_stage1, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes((Path(tiny_stage1) / "model.safetensors").read_bytes())
    meta = json.loads((Path(tiny_stage1) / "config.json").read_text())
    meta["config"]["enc_layers"] = 3
    (ckpt / "config.json").write_text(json.dumps(meta))
    assert tokenize(["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--tokenizer", str(ckpt)]) == 2
    one_line_error(capsys, "does not hold the", "-parameter TiTok", "missing 12: encoder.blocks.2.")
