"""Shared fixtures: the real JPEG sample on disk and a real S3 server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import corpus
import processes
import pytest

# The Ray / shard / tiny-model fixtures of the job tests, registered once for the whole session.
from pipeline_fixtures import (  # noqa: E402,F401
    bad_corpus,
    many_shards,
    ray_head,
    ray_local,
    sample_labels,
    sample_shards,
    tiny_teacher,
)
from s3_server import S3Server, running_s3_server

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSION = processes.mark_session()  # inherited by every process the suite starts


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite fails if any process it started outlives it (they are killed, then reported)."""
    left = processes.wait_gone(SESSION, timeout=15)
    if left:
        processes.kill(left)
        lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left)
        session.config.get_terminal_writer().line(
            f"\nFAILED: {len(left)} process(es) started by the test suite were still running at its end "
            f"(killed now):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def imagenet_sample_dir() -> Path:
    """<repo>/../shared/data/imagenet-sample: 250 ImageNet JPEGs plus labels.tsv."""
    path = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"
    if not (path / "labels.tsv").is_file():
        pytest.fail(f"the ImageNet sample is missing: expected {path}/labels.tsv next to the repository")
    return path


@pytest.fixture(scope="session")
def image_corpus(imagenet_sample_dir: Path) -> dict[str, tuple[bytes, str | None]]:
    """name -> (encoded image, expected quarantine reason or None if it must decode); see corpus.py."""
    return corpus.image_corpus((imagenet_sample_dir / "n01514859_hen.JPEG").read_bytes())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS, else moto) on 127.0.0.1 for the whole session; always stopped."""
    with running_s3_server(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """`s3_server` with its endpoint and credentials in os.environ, as a user would configure them."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
