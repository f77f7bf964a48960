"""jobs/train_tokenizer.py end to end: real JPEGs -> precompute job (tiny random teacher) -> stage 1 on
2 Ray Train workers (with a worker killed mid-run) -> stage 2 from its export; and the one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pipeline_fixtures import SAMPLE

from jobs.precompute_proxy import main as precompute
from jobs.train_tokenizer import main as train
from pipelines.encode.model import inference_layout
from pipelines.preprocess import (
    apply_view,
    crop_view,
    decode_and_preprocess,
    decode_stored_image,
    to_model_input,
    view_specs,
)
from pipelines.train.config import FAIL_AT_STEP_ENV
from pipelines.train.data import ViewSampler
from titok_core import PRESETS, VQGAN_PRESETS, MaskGITVQGAN, TiTok, TiTokReleased, load_model, save_pretrained
from titok_core.losses import proxy_code_accuracy

STAGE1_STEPS = 150  # the debug recipe's steps
KILL_AT = 70        # between the checkpoints at 50 and 100: the restart redoes 51..70


def job(*args) -> int:
    return train([str(a) for a in args])


@pytest.fixture(scope="module")
def proxy(ray_local, sample_shards, tiny_teacher, tmp_path_factory) -> Path:
    """12 real JPEGs x 4 views (offsets-2), codes from the tiny random teacher."""
    shards, _ = sample_shards
    out = tmp_path_factory.mktemp("train") / "proxy"
    assert precompute(["--input", shards, "--output", str(out), "--teacher", tiny_teacher, "--views", "offsets-2"]) == 0
    return out


def views_and_codes(proxy: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every stored view of every image, cropped from the stored pixels, with its teacher codes."""
    crops, codes = [], []
    for row in pq.read_table(proxy).to_pylist():
        image = decode_stored_image(row["image"])
        for offset, flip, c in zip(row["view_offsets"], row["view_flips"], row["proxy_codes"]):
            crops.append(crop_view(image, offset, flip, 256))
            codes.append(np.asarray(c, np.int64))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(np.stack(codes))


@pytest.mark.parametrize("image_format", ["zstd", "png", "jpeg"])
def test_training_crops_every_stored_view_exactly_as_precompute_encoded_it(
        image_format, proxy, ray_local, sample_shards, tiny_teacher, tmp_path):
    """The training reader's crop of stored view v is the crop the teacher saw for v: its codes are the
    stored codes, and with lossless storage it is the official preprocessing of the original JPEG."""
    data = proxy
    if image_format != "zstd":  # the fixture's dataset has the default format
        data = tmp_path / "proxy"
        assert precompute(["--input", sample_shards[0], "--output", str(data), "--teacher", tiny_teacher,
                           "--views", "offsets-2", "--image-format", image_format]) == 0
    teacher = inference_layout(load_model(tiny_teacher), torch.device("cpu"))
    sampler = ViewSampler(seed=0, crop=256)
    table = pq.read_table(data)
    batch = {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in table.column_names}
    views = view_specs("offsets-2")
    originals = {p.stem: p.read_bytes() for p in SAMPLE.glob("*.JPEG")}
    checked = 0
    for i, key in enumerate(batch["key"]):
        crops = np.stack([sampler.view_crop(batch, i, v) for v in range(len(views))])
        codes = teacher.encode(to_model_input(crops)).numpy()
        np.testing.assert_array_equal(codes, np.stack(batch["proxy_codes"][i]).astype(np.int64))
        if image_format != "jpeg":  # lossless: the official preprocessing of the original, bit for bit
            base = decode_and_preprocess(originals[key])
            for v, view in enumerate(views):
                np.testing.assert_array_equal(crops[v], apply_view(base, view))
        checked += len(views)
    assert checked == 12 * 4


@pytest.fixture(scope="module")
def stage1(proxy, tmp_path_factory) -> Path:
    """Stage 1 on 2 workers; the last worker SIGKILLs itself at step KILL_AT of the first attempt."""
    out = tmp_path_factory.mktemp("train") / "stage1"
    mp = pytest.MonkeyPatch()
    mp.setenv(FAIL_AT_STEP_ENV, str(KILL_AT))
    try:
        # --batch-size 12: the whole 12-image dataset each step (6 per worker)
        assert job("--stage", 1, "--preset", "debug", "--data", proxy, "--output", out, "--num-workers", 2,
                   "--batch-size", 12) == 0
    finally:
        mp.undo()
    return out


def test_stage1_learns_the_proxy_codes(stage1, proxy):
    x, codes = views_and_codes(proxy)
    baseline = np.bincount(codes.numpy().ravel()).max() / codes.numel()  # always the most frequent code
    model = load_model(stage1 / "model")
    assert isinstance(model, TiTok)
    with torch.no_grad():
        logits, _ = model(x)
    accuracy = float(proxy_code_accuracy(logits, codes))
    assert accuracy > 1.8 * baseline, (accuracy, baseline)
    rows = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["ce_loss"] < rows[0]["ce_loss"] - 1.0
    assert {"accuracy", "codebook_usage", "codebook_perplexity", "lr", "grad_norm", "images_per_s"} <= set(rows[-1])


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_finishes(stage1):
    attempts = [json.loads(line) for line in (stage1 / "attempts.jsonl").read_text().splitlines()]
    assert [a["resumed_from_step"] for a in attempts] == [None, 50]  # killed at 70, restarted from step 50
    steps = [json.loads(line)["step"] for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, STAGE1_STEPS + 1, 10))  # steps 60, 70 of the lost attempt logged once
    assert json.loads((stage1 / "model" / "config.json").read_text())["training"]["step"] == STAGE1_STEPS
    assert sorted(p.name for p in (stage1 / "checkpoints").glob("step_*")) == ["step_00000100", "step_00000150"]
    with open(stage1 / "metrics.csv") as f:
        assert f.readline().startswith("step,epoch,loss,ce_loss")
    assert list((stage1 / "tensorboard").glob("events.out.tfevents.*"))


def test_rerun_of_a_finished_run_does_not_train(stage1, proxy, capsys):
    before = {p: p.stat().st_mtime_ns for p in stage1.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    assert job("--stage", 1, "--preset", "debug", "--data", proxy, "--output", stage1,
               "--num-workers", 2, "--batch-size", 12) == 0
    assert time.perf_counter() - t0 < 20
    assert "already trained" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stage1.rglob("*") if p.is_file()} == before


def test_rerun_with_more_steps_resumes_from_the_last_checkpoint(stage1, proxy, tmp_path):
    run = tmp_path / "longer"
    shutil.copytree(stage1, run)  # Ray Train's run state names its checkpoints relative to the run
    assert job("--stage", 1, "--preset", "debug", "--data", proxy, "--output", run, "--num-workers", 2,
               "--batch-size", 12, "--steps", STAGE1_STEPS + 10) == 0
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert attempts[-1]["resumed_from_step"] == STAGE1_STEPS
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, STAGE1_STEPS + 11, 10))
    assert json.loads((run / "model" / "config.json").read_text())["training"]["step"] == STAGE1_STEPS + 10


def test_data_and_output_on_s3(proxy, s3_env, tmp_path, monkeypatch):
    import fsspec

    from pipelines.storage import fetch_to_cache
    monkeypatch.setenv("TITOK_CACHE", str(tmp_path / "cache"))  # staging of rank 0's files, fetched models
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_env.endpoint_url})
    bucket = s3_env.create_bucket()
    for p in sorted(proxy.glob("*.parquet")):
        fs.put_file(str(p), f"{bucket}/proxy/{p.name}")
    args = ["--stage", 1, "--preset", "debug", "--data", f"s3://{bucket}/proxy", "--output", f"s3://{bucket}/run",
            "--num-workers", 2, "--batch-size", 12, "--steps", 10, "--endpoint-url", s3_env.endpoint_url]
    assert job(*args) == 0
    rows = fs.cat_file(f"{bucket}/run/metrics.jsonl").decode().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [10]
    assert fs.exists(f"{bucket}/run/checkpoints/step_00000010/state.pt")
    assert fs.exists(f"{bucket}/run/images/step_00000010.png")
    assert isinstance(load_model(fetch_to_cache(f"s3://{bucket}/run/model", option="--init")), TiTok)
    assert job(*args) == 0  # finished: nothing to do


def test_exported_model_and_grid(stage1):
    model = load_model(stage1 / "model")
    state = torch.load(stage1 / "checkpoints" / "step_00000150" / "state.pt", weights_only=False)
    ema = state["task"]["ema"]["module"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())  # the export is the final EMA
    grid = Image.open(stage1 / "images" / f"step_{STAGE1_STEPS:08d}.png")
    assert grid.size == (2 * 256, 2 * 256) and grid.mode == "RGB"  # 2 rows of [input | reconstruction]


def test_stage2_from_stage1_trains_the_decoders_only(stage1, proxy, tmp_path):
    out = tmp_path / "stage2"
    assert job("--stage", 2, "--preset", "debug", "--data", proxy, "--output", out, "--num-workers", 2,
               "--init", stage1 / "model", "--random-backbones") == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.mean([r["l2_loss"] for r in rows[-2:]]) < 0.7 * np.mean([r["l2_loss"] for r in rows[:2]])
    assert any(r.get("d_loss") for r in rows) and any(r["gan_weight"] > 0 for r in rows)  # the GAN ran
    released = load_model(out / "model")
    first = load_model(stage1 / "model")
    assert isinstance(released, TiTokReleased)
    frozen = {k: v for k, v in first.state_dict().items() if k.startswith(("encoder.", "quantize."))}
    after = released.titok.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # bit-equal encoder, tokens, codebook
    assert not torch.equal(first.decoder.proxy_head[2].weight, released.titok.decoder.proxy_head[2].weight)
    with torch.no_grad():
        images = released.decode_tokens(released.encode(torch.rand(2, 3, 256, 256)), clamp=True)
    assert images.shape == (2, 3, 256, 256)
    grid = Image.open(max((out / "images").glob("step_*.png")))
    assert grid.size == (512, 512)


def test_bad_configurations_are_one_line_errors_before_any_worker(proxy, tmp_path, capsys, tiny_teacher, stage1):
    def error(*args) -> str:
        t0 = time.perf_counter()
        assert job(*args) == 2
        assert time.perf_counter() - t0 < 15  # no Ray Train worker was started
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    base = ["--preset", "debug", "--output", tmp_path / "out"]
    assert "does not exist" in error("--stage", 1, *base, "--data", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no input shards" in error("--stage", 1, *base, "--data", tmp_path / "empty")
    assert "--init" in error("--stage", 2, *base, "--data", proxy)
    assert "not divisible by --num-workers 3" in error("--stage", 1, *base, "--data", proxy, "--num-workers", 3,
                                                       "--batch-size", 8)
    # a dataset whose layout does not fit the model: codebook size, then crop size
    for key, value, message in (("proxy_codebook_size", 512, "proxy codebook size is 512"),
                                ("crop_size", 128, "crop size is 128")):
        bad = tmp_path / f"bad-{key}"
        bad.mkdir()
        table = pq.read_table(next(proxy.glob("*.parquet")))
        meta = json.loads(table.schema.metadata[b"titok"])
        meta[key] = value
        pq.write_table(table.replace_schema_metadata({b"titok": json.dumps(meta).encode()}), bad / "part.parquet")
        assert message in error("--stage", 1, *base, "--data", bad)
    # an empty file: no rows
    empty = tmp_path / "no-rows"
    empty.mkdir()
    table = pq.read_table(next(proxy.glob("*.parquet")))
    pq.write_table(table.slice(0, 0), empty / "part.parquet")
    assert "no rows" in error("--stage", 1, *base, "--data", empty)
    # another teacher than the dataset's
    torch.manual_seed(1)
    other = tmp_path / "other-teacher.bin"
    torch.save(MaskGITVQGAN(VQGAN_PRESETS["debug"]).state_dict(), other)
    assert "not the teacher that made" in error("--stage", 1, *base, "--data", proxy, "--teacher", other)
    # a stage-1 checkpoint of another size, and one that is no TiTok at all
    other_size = save_pretrained(TiTok(dataclasses.replace(PRESETS["debug"], num_latent_tokens=16)), tmp_path / "n16")
    assert "not a debug model" in error("--stage", 2, *base, "--data", proxy, "--init", other_size)
    assert "not a TiTok" in error("--stage", 2, *base, "--data", proxy, "--init", tiny_teacher)
    # an output that holds a different run
    shutil.copytree(stage1, tmp_path / "taken", ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    assert "holds a different run" in error("--stage", 1, "--preset", "debug", "--data", proxy, "--output",
                                            tmp_path / "taken", "--batch-size", 4)
