"""Which processes a test session started, found by a marker in their environment.

Every process the suite starts (Ray heads and workers, S3 servers, job subprocesses, sshd) inherits
the environment of the pytest process, so a unique variable set at session start marks them all,
even Ray workers that live in other process groups and rename themselves (`ray::TrainController`),
which matching command lines misses.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

MARKER = "TITOK_TEST_SESSION"


def mark_session() -> str:
    """Set (once) the marker this process's children inherit; returns its value."""
    return os.environ.setdefault(MARKER, uuid.uuid4().hex)


def marked(value: str, name: str = MARKER) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment holds name=value, except this one."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie is already dead
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append((int(entry), f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def wait_gone(value: str, timeout: float, name: str = MARKER) -> list[tuple[int, str]]:
    """Wait up to `timeout` s for the marked processes to exit; the ones still alive."""
    deadline = time.monotonic() + timeout
    while (left := marked(value, name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def kill(processes: list[tuple[int, str]]) -> None:
    for pid, _ in processes:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
