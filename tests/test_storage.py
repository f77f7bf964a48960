"""Input expansion, atomic writes, small file helpers and the weights cache, local and on S3."""

import os
import socket

import pytest

from pipelines import storage
from pipelines.storage import atomic_open, expand_inputs, fetch_to_cache


@pytest.fixture
def shard_dir(tmp_path):
    """A directory with train-000000..000003.tar, a val shard, a manifest and a sub-directory."""
    for name in [*(f"train-{i:06d}.tar" for i in range(4)), "val-000000.tar", "manifest.json"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep-000000.tar").write_bytes(b"x")
    return tmp_path


def test_brace_glob_directory_and_list_specs(shard_dir):
    train = [str(shard_dir / f"train-{i:06d}.tar") for i in range(4)]
    val = str(shard_dir / "val-000000.tar")
    assert expand_inputs(str(shard_dir / "train-{000000..000003}.tar")) == train
    assert expand_inputs(str(shard_dir / "train-{000002..000003}.tar")) == train[2:]
    assert expand_inputs(str(shard_dir / "*-000000.tar")) == [train[0], val]
    assert expand_inputs(str(shard_dir)) == train + [val]  # *.tar only, not sub/
    deep = str(shard_dir / "sub" / "deep-000000.tar")
    assert expand_inputs(str(shard_dir / "{train-000001.tar,sub}")) == [train[1], deep]
    assert expand_inputs("file://" + str(shard_dir / "val-*.tar")) == ["file://" + val]

    listing = shard_dir / "shards.txt"
    listing.write_text("# training shards\ntrain-000003.tar\n\n  train-000000.tar  \n# s3://commented/out.tar\n"
                       f"{shard_dir}/val-000000.tar\ns3://bucket/remote-000000.tar\n")
    assert expand_inputs(str(listing)) == [train[3], train[0], val, "s3://bucket/remote-000000.tar"]


def test_specs_that_match_nothing_fail_with_one_line_naming_the_spec(shard_dir):
    cases = {
        str(shard_dir / "nothing-*.tar"): "no input shards match",
        str(shard_dir / "missing"): "no input shards match",
        str(shard_dir / "sub" / "*.json"): "no input shards match",
        str(shard_dir / "train-{000002..000005}.tar"): "2 shard\\(s\\) named by",
        str(shard_dir / "train-{000001,000001}.tar"): "named twice",
        str(shard_dir / "absent.txt"): "does not exist",
        "": "no input shards match",
    }
    (shard_dir / "empty.txt").write_text("# nothing here\n")
    cases[str(shard_dir / "empty.txt")] = "no input shards match"
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            expand_inputs(spec)
        assert repr(spec) in str(info.value) and "\n" not in str(info.value)


def test_atomic_write_leaves_no_temp_file_and_no_partial_file(tmp_path):
    target = tmp_path / "out" / "result.bin"
    storage.atomic_write_bytes(str(target), b"complete")
    assert target.read_bytes() == b"complete" and os.listdir(target.parent) == ["result.bin"]

    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_open(str(target)) as f:
            f.write(b"half of the new content")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"complete" and os.listdir(target.parent) == ["result.bin"]

    fresh = tmp_path / "out" / "never.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(str(fresh)) as f:
            f.write(b"partial")
            raise RuntimeError("writer died")
    assert not fresh.exists() and os.listdir(target.parent) == ["result.bin"]


def test_json_exists_and_list_dir_locally(tmp_path):
    url = str(tmp_path / "a" / "manifest.json")
    assert not storage.exists(url) and storage.list_dir(str(tmp_path / "a")) == []
    storage.write_json_atomic(url, {"b": 1, "a": [1, 2]})
    assert storage.read_json(url) == {"a": [1, 2], "b": 1}
    assert open(url).read() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'  # sorted keys: stable bytes
    assert storage.exists(url) and storage.list_dir(str(tmp_path / "a")) == [url]


@pytest.mark.slow
def test_s3_helpers_and_atomic_upload(s3_env):
    bucket = s3_env.create_bucket()
    base = f"s3://{bucket}/run"
    storage.write_json_atomic(f"{base}/config.json", {"resolution": 256})
    assert storage.read_json(f"{base}/config.json") == {"resolution": 256}

    with pytest.raises(RuntimeError):
        with atomic_open(f"{base}/partial.bin") as f:
            f.write(b"x" * 1_000_000)
            raise RuntimeError("writer died")
    assert not storage.exists(f"{base}/partial.bin")
    with atomic_open(f"{base}/big.bin") as f:
        f.write(b"y" * 6_000_000)
    assert storage.read_bytes(f"{base}/big.bin") == b"y" * 6_000_000
    assert storage.list_dir(base) == [f"{base}/big.bin", f"{base}/config.json"]

    for i in range(3):
        storage.atomic_write_bytes(f"{base}/shards/train-{i:06d}.tar", b"t")
    shards = [f"{base}/shards/train-{i:06d}.tar" for i in range(3)]
    assert expand_inputs(f"{base}/shards/train-{{000000..000002}}.tar") == shards
    assert expand_inputs(f"{base}/shards") == shards
    assert expand_inputs(f"{base}/shards/*.tar") == shards
    with pytest.raises(ValueError, match="1 shard"):
        expand_inputs(f"{base}/shards/train-{{000000..000003}}.tar")


@pytest.mark.slow
def test_explicit_endpoint_overrides_the_environment(s3_server, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    bucket = s3_server.create_bucket()
    fs, path = storage.get_fs(f"s3://{bucket}/x.bin", endpoint_url=s3_server.endpoint_url)
    fs.pipe_file(path, b"via explicit endpoint")
    assert s3_server.client().get_object(Bucket=bucket, Key="x.bin")["Body"].read() == b"via explicit endpoint"


def test_fetch_local_path_is_returned_as_is(tmp_path):
    weights = tmp_path / "teacher.bin"
    weights.write_bytes(b"w")
    assert fetch_to_cache(str(weights)) == str(weights)
    assert fetch_to_cache("file://" + str(weights)) == str(weights)
    with pytest.raises(FileNotFoundError, match="--teacher: weights .*missing.bin.* does not exist"):
        fetch_to_cache(str(tmp_path / "missing.bin"))
    (tmp_path / "ckpt").mkdir()  # our checkpoint format is a directory
    assert fetch_to_cache(str(tmp_path / "ckpt")) == str(tmp_path / "ckpt")


@pytest.mark.slow
def test_fetch_from_s3_downloads_once_into_the_cache(tmp_path, s3_env, monkeypatch):
    monkeypatch.setenv("TITOK_CACHE", str(tmp_path / "cache"))
    bucket = s3_env.create_bucket()
    s3_env.client().put_object(Bucket=bucket, Key="weights/vq.bin", Body=b"w" * 100_000)
    path = fetch_to_cache(f"s3://{bucket}/weights/vq.bin")
    assert path.startswith(str(tmp_path / "cache")) and path.endswith("/vq.bin")
    assert open(path, "rb").read() == b"w" * 100_000
    assert os.listdir(os.path.dirname(path)) == ["vq.bin"]  # no .part left behind
    s3_env.client().delete_object(Bucket=bucket, Key="weights/vq.bin")
    assert fetch_to_cache(f"s3://{bucket}/weights/vq.bin") == path  # served from the cache
    with pytest.raises(RuntimeError, match="--tokenizer: could not download tokenizer weights"):
        fetch_to_cache(f"s3://{bucket}/weights/other.bin", what="tokenizer weights", option="--tokenizer")


@pytest.mark.slow
def test_fetch_checkpoint_directory_from_s3(tmp_path, s3_env, monkeypatch):
    from titok_core import PRESETS, TiTok, load_model, save_pretrained
    monkeypatch.setenv("TITOK_CACHE", str(tmp_path / "cache"))
    bucket = s3_env.create_bucket()
    local = save_pretrained(TiTok(PRESETS["debug"]), tmp_path / "ckpt")
    for f in local.iterdir():
        s3_env.client().put_object(Bucket=bucket, Key=f"runs/ckpt/{f.name}", Body=f.read_bytes())
    path = fetch_to_cache(f"s3://{bucket}/runs/ckpt", what="tokenizer", option="--tokenizer")
    assert sorted(os.listdir(path)) == [".complete", "config.json", "model.safetensors"]
    assert load_model(path).config == PRESETS["debug"]
    s3_env.client().delete_object(Bucket=bucket, Key="runs/ckpt/config.json")
    assert fetch_to_cache(f"s3://{bucket}/runs/ckpt") == path  # served from the cache


def test_fetch_unreachable_url_says_to_pass_a_local_path(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    with pytest.raises(RuntimeError) as info:
        fetch_to_cache(f"http://127.0.0.1:{port}/maskgit-vqgan.bin", cache_dir=str(tmp_path))
    message = str(info.value)
    assert message.startswith("--teacher: could not download weights") and "pass a local path" in message
    assert "\n" not in message
    assert [f for _, _, files in os.walk(tmp_path) for f in files] == []  # no partial download
