"""Fixtures for the Ray jobs: a local Ray, a real `ray start --head`, shards of real JPEGs, tiny models."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import corpus
import processes
import pytest
import torch

import pipelines.quarantine as q
from pipelines.shards import collect_images, pack, write_shards
from titok_core import VQGAN_PRESETS, MaskGITVQGAN

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
VENV_BIN = str(Path(os.sys.executable).parent)

HEAD_MARKER = "TITOK_TEST_RAY_HEAD"
LOCAL_MARKER = "TITOK_TEST_RAY_LOCAL"
# Ray settings every test cluster uses: no auth token files, no telemetry, loopback only.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """ray.init(num_cpus=2) in the test process, shared by the in-process job tests."""
    import ray
    os.environ.update(RAY_ENV)
    local_id = uuid.uuid4().hex
    os.environ[LOCAL_MARKER] = local_id  # inherited by the cluster's processes only: removed once they started
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        del os.environ[LOCAL_MARKER]
    yield
    ray.shutdown()
    # Ray 2.60's TrainController can hang in its exit after its core worker shut down (seen once in a suite
    # run: alive 20 minutes later); the fixture that started the cluster ends whatever is left of it.
    processes.kill(processes.wait_gone(local_id, timeout=20, name=LOCAL_MARKER))
    assert not processes.wait_gone(local_id, timeout=20, name=LOCAL_MARKER), "local Ray processes outlived the fixture"


@dataclass(frozen=True)
class RayHead:
    address: str
    dashboard_url: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A real `ray start --head --block` (with the job server) in its own session; killed at the end."""
    port, dash = _free_port(), _free_port()
    # every fixed default port gets a free one: another Ray on this machine (ray_local) holds the defaults
    extra = [f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port", "object-manager-port", "node-manager-port")]
    temp = tmp_path_factory.mktemp("rayhead")
    head_id = uuid.uuid4().hex  # marks every process of this cluster, whatever it renames itself to
    env = {**os.environ, **RAY_ENV, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", HEAD_MARKER: head_id}
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp}",
         "--disable-usage-stats", *extra],
        env=env, stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail("ray head did not start: " + (temp / "head.log").read_text()[-2000:])
            time.sleep(0.5)
    client_env = {**RAY_ENV, "RAY_ADDRESS": f"127.0.0.1:{port}", "PATH": env["PATH"]}
    # the job agent registers a few seconds after the dashboard answers: wait until a job is accepted
    while True:
        probe = subprocess.run(["ray", "job", "submit", "--address", url, "--no-wait", "--", "true"],
                               env={**os.environ, **client_env}, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("ray head never accepted a job: " + probe.stderr[-2000:])
        time.sleep(1)
    try:
        yield RayHead(f"127.0.0.1:{port}", url, client_env)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers the head spawned live in their own sessions and rename themselves (ray::TrainController),
        # so neither the process group nor the command line finds them; their environment does.
        processes.kill(processes.marked(head_id, HEAD_MARKER))
        left = processes.wait_gone(head_id, timeout=20, name=HEAD_MARKER)
        assert not left, f"ray head processes outlived the fixture: {left}"


def s3_with_shards(server, shards: str, prefix: str):
    """An fsspec S3 filesystem on `server`, a fresh bucket, and the shards uploaded to <bucket>/<prefix>/."""
    import fsspec
    bucket = server.create_bucket()
    fs = fsspec.filesystem("s3", key=server.access_key, secret=server.secret_key,
                           client_kwargs={"endpoint_url": server.endpoint_url})
    for p in sorted(Path(shards).glob("*.tar")):
        fs.put_file(str(p), f"{bucket}/{prefix}/{p.name}")
    return fs, bucket


def committed_shards(out: Path) -> int:
    """How many shards a job has committed (success records) so far."""
    d = Path(out) / "_success"
    return len(list(d.glob("*.json"))) if d.exists() else 0


def settled_commits(out: Path, quiet: float = 3.0, timeout: float = 60.0) -> int:
    """Committed shards once a killed job has stopped committing. A kill -9 of the driver leaves its Ray
    workers running until the cluster notices; a shard a worker is already committing may still land."""
    last, since, deadline = committed_shards(out), time.time(), time.time() + timeout
    while time.time() - since < quiet and time.time() < deadline:
        time.sleep(0.2)
        if (now := committed_shards(out)) != last:
            last, since = now, time.time()
    return last


@pytest.fixture(scope="session")
def sample_labels() -> dict[str, int]:
    return {im.key: im.label for im in collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))}


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory) -> tuple[str, int]:
    """12 real ImageNet JPEGs in 3 shards of 4, written by our shard writer."""
    images = collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))[:12]
    out = tmp_path_factory.mktemp("shards")
    pack(images, str(out), 4)
    return str(out), len(images)


@pytest.fixture(scope="session")
def many_shards(tmp_path_factory) -> tuple[str, list[str]]:
    """20 real JPEGs in 10 shards of 2 (room to kill a job between commits)."""
    images = collect_images(str(SAMPLE), labels=str(SAMPLE / "labels.tsv"))[12:32]
    out = tmp_path_factory.mktemp("many")
    pack(images, str(out), 2)
    return str(out), [im.key for im in images]


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A small random MaskGIT-VQGAN saved as an official-style state-dict file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny-maskgit-vqgan.bin"
    torch.save(MaskGITVQGAN(VQGAN_PRESETS["debug"]).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory) -> tuple[str, list[str], list[tuple[str, str]]]:
    """Two shards: every kind of bad input next to good images, and a tar cut in its last sample.

    Returns (shard directory, keys that must survive, (key, reason) of everything quarantined).
    """
    real = (SAMPLE / "n01514859_hen.JPEG").read_bytes()
    images = corpus.image_corpus(real)
    out = tmp_path_factory.mktemp("bad")
    samples = [(name, data, "jpg", 1) for name, (data, _) in images.items()]
    samples += [("nolabel", real, "jpg", None), ("outofrange", real, "jpg", 5000), ("badlabel", real, "jpg", b"x1"),
                ("real_jpeg", real, "jpg", 1), ("junk", b"x", "xyz", None), ("noimage", None, "jpg", 3)]
    write_shards(samples, str(out), 1000, prefix="bad")
    good = [name for name, (_, reason) in images.items() if reason is None]
    reasons = [(name, reason) for name, (_, reason) in images.items() if reason is not None]
    reasons += [("nolabel", q.MISSING_LABEL), ("outofrange", q.LABEL_OUT_OF_RANGE), ("badlabel", q.BAD_LABEL),
                ("real_jpeg", q.DUPLICATE_KEY), ("junk", q.JUNK_MEMBER), ("noimage", q.MISSING_IMAGE)]
    # a shard cut inside its last sample: the three complete samples before the cut survive
    (cut,) = write_shards([(f"cut{i}", real, "jpg", i) for i in range(4)], str(out), 10, prefix="cut")
    with tarfile.open(cut) as tar:
        last = [m for m in tar.getmembers() if m.name == "cut3.jpg"][0]
    data = Path(cut).read_bytes()
    Path(cut).write_bytes(data[: last.offset_data + last.size // 2])
    good += ["cut0", "cut1", "cut2"]
    reasons += [("cut3", q.TRUNCATED_TAR)]
    return str(out), good, reasons
