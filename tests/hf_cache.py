"""A real huggingface_hub cache on disk, filled without a network: what `hf download` leaves behind.

The layout huggingface_hub reads (file_download.py, _snapshot_download.py, _tree_cache.py):

    <cache>/models--<owner>--<name>/blobs/<etag>               the bytes; etag = sha256 for LFS files
                                                               (weights), the git blob sha1 otherwise
    <cache>/models--<owner>--<name>/snapshots/<commit>/<file>  relative symlink to its blob
    <cache>/models--<owner>--<name>/refs/<revision>            the commit a branch / tag resolves to
    <cache>/models--<owner>--<name>/trees/<commit>.json        the commit's file listing (offline
                                                               snapshot_download checks completeness with it)

`huggingface_hub.scan_cache_dir` accepts what `fill` writes (tests/test_hub.py checks that).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fill(cache_dir: str | Path, repo_id: str, files: dict[str, bytes | Path], revision: str = "main") -> str:
    """Put `files` (path in the repository -> content or a file to copy) into the cache as the
    repository's `revision`; returns the commit hash the revision now resolves to."""
    contents = {name: (data.read_bytes() if isinstance(data, Path) else data) for name, data in files.items()}
    commit = hashlib.sha1(json.dumps({n: hashlib.sha256(d).hexdigest() for n, d in sorted(contents.items())})
                          .encode() + repo_id.encode()).hexdigest()
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    tree = {}
    for name, data in contents.items():
        lfs = name.endswith(LFS_SUFFIXES)
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        tree[name] = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if lfs:
            tree[name].update(lfs_sha256=etag, lfs_size=len(data))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)  # no newline, as huggingface_hub writes it
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}, indent=1))
    return commit
