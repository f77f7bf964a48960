"""Where bytes live: local paths and fsspec URLs (s3://, gs://, http(s)://, file://).

Every read or write of a dataset, manifest or weights file in this project goes through here,
so credentials, endpoints and atomicity are decided in one place:

- `get_fs` resolves a URL to an fsspec filesystem; S3 credentials come from the standard AWS
  chain (env, ~/.aws), the endpoint from the argument or `AWS_ENDPOINT_URL(_S3)`.
- `expand_inputs` turns a shard spec (brace pattern, glob, directory, .txt list) into URLs.
- `atomic_open` / `atomic_write_bytes` / `write_json_atomic` never leave a partial file visible.
- `fetch_to_cache` turns a weights URL into a local path, downloading once; a Hugging Face Hub name
  (`hf://owner/name[@revision][/file]`) goes through huggingface_hub's own cache (`fetch_hf`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import re
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from braceexpand import braceexpand
from fsspec.callbacks import TqdmCallback
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

StorageOptions = Mapping[str, Any] | None

LOCAL_PROTOCOLS = frozenset({"file", "local"})
HTTP_PROTOCOLS = frozenset({"http", "https"})
S3_PROTOCOLS = frozenset({"s3", "s3a"})
DOWNLOAD_PROTOCOLS = HTTP_PROTOCOLS | S3_PROTOCOLS | {"gs", "gcs"}
HF_PROTOCOL = "hf"  # Hugging Face Hub names, resolved by fetch_hf
DEFAULT_CACHE_DIR = "~/.cache/titok-ray"
_GLOB_CHARS = frozenset("*?[")


def protocol_of(url: str) -> str:
    """The URL's scheme ("s3", "https", ...); "file" for plain local paths."""
    protocol, _ = split_protocol(url)
    return protocol or "file"


def is_local(url: str) -> bool:
    """True for plain paths and file:// URLs."""
    return protocol_of(url) in LOCAL_PROTOCOLS


def local_path(url: str) -> str:
    """The absolute local path of a plain path or file:// URL (`~` expanded)."""
    return os.path.abspath(os.path.expanduser(split_protocol(url)[1]))


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use: the argument, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint_options(endpoint_url: str | None) -> dict[str, Any] | None:
    """Storage options for a custom S3 endpoint (a job's --endpoint-url); None for the default.

    The endpoint is also exported as AWS_ENDPOINT_URL, so s3fs, pyarrow and every Ray task (which
    inherits the AWS_* environment, see runtime.forwarded_env) use the same one."""
    if not endpoint_url:
        return None
    os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    return {"endpoint_url": endpoint_url}


def get_fs(
    url: str, endpoint_url: str | None = None, storage_options: StorageOptions = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and in-filesystem path for `url`.

    S3 credentials and region come from botocore's standard chain (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config). No region is forced: s3fs with
    `region_name="us-east-1"` was seen to break bucket creation on S3-compatible servers.

    Args:
        url: local path or fsspec URL.
        endpoint_url: custom S3 endpoint (MinIO, SeaweedFS, Ceph); overrides
            `storage_options["endpoint_url"]` and the AWS_ENDPOINT_URL(_S3) environment variables;
            ignored for other protocols, so one option can serve local and S3 paths.
        storage_options: extra keyword arguments for the fsspec filesystem.
    """
    options = dict(storage_options or {})
    endpoint_url = endpoint_url or options.pop("endpoint_url", None)  # S3 only: other filesystems reject it
    if protocol_of(url) in S3_PROTOCOLS:
        endpoint = s3_endpoint(endpoint_url)
        if endpoint:
            options["endpoint_url"] = endpoint
    if is_local(url):
        url = os.path.expanduser(url)
    return url_to_fs(url, **options)


def _to_url(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """`path` from `fs` written the way `like` was: plain path for plain paths, else a full URL."""
    if split_protocol(like)[0] is None:
        return path
    return fs.unstrip_protocol(path)


def join_url(base: str, *parts: str) -> str:
    """`base` joined with `parts` using "/" (or os.path.join for plain local paths)."""
    if split_protocol(base)[0] is None:
        return os.path.join(base, *parts)
    return posixpath.join(base, *parts)


# --------------------------------------------------------------------------- output checks

# Kernel pseudo filesystems: writable-looking, but no place for data.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs", "efivarfs", "binfmt_misc", "nsfs", "rpc_pipefs",
})


def _mount_of(path: str) -> tuple[str, bool]:
    """(filesystem type, mounted read-only) of the mount holding `path` (Linux; ("", False) elsewhere)."""
    best, fstype, read_only = "", "", False
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                mount_point = fields[4].replace("\\040", " ")
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, fields[sep + 1]
                    read_only = "ro" in fields[5].split(",") or "ro" in fields[sep + 3].split(",")
    except (OSError, ValueError, IndexError):
        pass
    return fstype, read_only


def check_output(url: str, option: str = "--output", storage_options: StorageOptions = None) -> None:
    """Fail early, with one line, for an output no job could write: a file, a directory under a
    file, a read-only or pseudo filesystem (/proc, /sys), no write permission; on object stores, a
    bucket that does not exist. Writes nothing.

    Raises:
        ValueError: naming `option`, the problem and the fix.
    """
    if not is_local(url):
        fs, path = get_fs(url, storage_options=storage_options)
        bucket = path.split("/", 1)[0]
        try:
            found = fs.exists(bucket)
        except Exception as e:  # unreachable endpoint, no credentials ...
            raise ValueError(f"{option} {url}: cannot reach {protocol_of(url)}://{bucket} ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:150]}); check the endpoint and credentials") from None
        if not found:
            raise ValueError(f"{option} {url}: bucket {bucket!r} does not exist; create it or pick another --output")
        return
    path = local_path(url)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise ValueError(f"{option} {url} {where}; give a directory (it is created if missing)")
    fstype, read_only = _mount_of(os.path.realpath(existing))
    if fstype in PSEUDO_FILESYSTEMS:
        raise ValueError(f"{option} {url} is on the {fstype} pseudo filesystem, which cannot hold data; "
                         "give a directory on a disk or an object-store URL (s3://...)")
    if read_only or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise ValueError(f"{option} {url} is on a read-only filesystem; give a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {url}: no permission to write in {existing}; give a directory you can write")


# --------------------------------------------------------------------------- failures

_OUTAGE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                            errno.ENETUNREACH, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
_OUTAGE_TYPES = ("EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
                 "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError")
_OUTAGE_TEXT = ("Could not connect to the endpoint URL", "Connection refused", "Cannot connect to host",
                "No space left on device", "Read-only file system", "Connect timeout on endpoint")


def storage_failure(error: BaseException) -> str | None:
    """A short description if `error` (or what caused it, also inside a Ray task error) is the storage
    failing (unreachable object store, connection lost, disk full), else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        names = {t.__name__ for t in type(e).__mro__}
        text = str(e)
        if (isinstance(e, (ConnectionError, TimeoutError)) or names & set(_OUTAGE_TYPES)
                or (isinstance(e, OSError) and e.errno in _OUTAGE_ERRNOS)):
            return f"{type(e).__name__}: {(text.splitlines() or [''])[0][:160]}"
        for pattern in _OUTAGE_TEXT:  # a Ray task error may carry the cause only as text
            if pattern in text:
                line = next((ln for ln in text.splitlines() if pattern in ln), pattern)
                return line.strip()[:200]
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


# --------------------------------------------------------------------------- input specs


def expand_inputs(spec: str, storage_options: StorageOptions = None, suffix: str = ".tar") -> list[str]:
    """Input shard URLs named by `spec`, in a deterministic order.

    `spec` is one of (local paths or any fsspec URL):
    - a brace pattern, `s3://b/train-{000000..000099}.tar` (expanded in order; every shard must exist),
    - a glob, `data/*.tar` (sorted),
    - a directory: every `*<suffix>` (`*.tar` by default) directly inside it (sorted),
    - a list file ending in `.txt`: one URL per line, `#` comment lines; relative entries are
      relative to the list file; kept in file order; entries are not checked here.
    Brace patterns may contain globs (`s3://b/{train,val}/*.tar`). http(s) shards cannot be
    listed, so they are returned unchecked.

    Raises:
        ValueError: nothing matches, some brace-expanded shards are missing, or a shard is named twice.
    """
    spec = spec.strip()
    urls: list[str] = []
    missing: list[str] = []
    if spec.endswith(".txt"):
        urls = _read_list_file(spec, storage_options)
    elif spec:
        listings: dict[str, dict[str, str]] = {}
        for part in braceexpand(spec):
            found = _expand_one(part, storage_options, listings, suffix)
            if found is None:
                missing.append(part)
            else:
                urls.extend(found)
    if not urls:
        raise ValueError(
            f"no input shards match {spec!r} (expected a brace pattern, glob, directory of *{suffix} or .txt list)")
    if missing:
        raise ValueError(f"{len(missing)} shard(s) named by {spec!r} do not exist, e.g. {missing[0]!r}")
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise ValueError(f"input shard {url!r} is named twice by {spec!r}")
        seen.add(url)
    return urls


def _expand_one(
    part: str, storage_options: StorageOptions, listings: dict[str, dict[str, str]], suffix: str = ".tar"
) -> list[str] | None:
    """URLs for one brace-expanded part; None when a literal path does not exist."""
    if protocol_of(part) in HTTP_PROTOCOLS:
        return [part]
    fs, path = get_fs(part, storage_options=storage_options)
    if any(c in _GLOB_CHARS for c in path):
        fs.invalidate_cache()
        matches = fs.glob(path, detail=True)
        return sorted(_to_url(fs, p, part) for p, info in matches.items() if info.get("type") == "file")
    kind = _kind(fs, path, listings)
    if kind is None:
        return None
    if kind == "directory":
        pattern = path.rstrip("/") + "/*" + suffix
        return sorted(_to_url(fs, p, part) for p in fs.glob(pattern))
    return [_to_url(fs, path, part)]


def _kind(fs: fsspec.AbstractFileSystem, path: str, listings: dict[str, dict[str, str]]) -> str | None:
    """"file", "directory" or None (missing). Lists each parent once: a 1,000-shard brace
    pattern on S3 costs one LIST, not 1,000 HEAD requests."""
    path = path.rstrip("/")
    parent = posixpath.dirname(path)
    if parent not in listings:
        fs.invalidate_cache(parent)
        try:
            listings[parent] = {e["name"].rstrip("/"): e["type"] for e in fs.ls(parent, detail=True)}
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            listings[parent] = {}
    kind = listings[parent].get(path)
    if kind is None:  # not in the parent's listing (bucket roots, odd listings): ask directly
        try:
            kind = fs.info(path)["type"]
        except FileNotFoundError:
            return None
    return kind


def _read_list_file(spec: str, storage_options: StorageOptions) -> list[str]:
    """Entries of a .txt shard list, relative ones resolved against the list's directory."""
    fs, path = get_fs(spec, storage_options=storage_options)
    try:
        text = fs.cat_file(path).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"input list file {spec!r} does not exist") from None
    base = _to_url(fs, posixpath.dirname(path), spec)
    urls = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if split_protocol(line)[0] is None and not os.path.isabs(line):
            line = join_url(base, line)
        urls.append(line)
    return urls


# --------------------------------------------------------------------------- small file helpers


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    """True if a file or directory (prefix) exists at `url`."""
    fs, path = get_fs(url, storage_options=storage_options)
    fs.invalidate_cache(path)
    return fs.exists(path)


def list_dir(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Sorted URLs of the direct children of `url`; [] if it does not exist (on object stores a
    missing prefix and an empty one are the same thing)."""
    fs, path = get_fs(url, storage_options=storage_options)
    fs.invalidate_cache(path)
    try:
        names = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(_to_url(fs, name.rstrip("/"), url) for name in names)


def remove(url: str, storage_options: StorageOptions = None) -> None:
    """Delete one file."""
    fs, path = get_fs(url, storage_options=storage_options)
    fs.rm_file(path)


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    """The whole content of one file."""
    fs, path = get_fs(url, storage_options=storage_options)
    return fs.cat_file(path)


def read_json(url: str, storage_options: StorageOptions = None) -> Any:
    """Parsed JSON content of one file."""
    return json.loads(read_bytes(url, storage_options))


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb", storage_options: StorageOptions = None) -> Iterator[IO[Any]]:
    """Open `url` for writing so readers see the old content or the whole new one, never a part.

    Local: a temporary file in the same directory, fsync, then `os.replace` (atomic on POSIX).
    Object stores: the data is spooled to a local temporary file and uploaded in one
    `put_file` once the block exits cleanly; on S3 that is one PUT or a multipart upload that is
    completed last (s3fs aborts it on error), so an interrupted write leaves no object.
    If the block raises, nothing is written and the temporary file is removed.

    Args:
        url: destination; parent directories are created for local paths.
        mode: "wb" or "w" (text, UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    encoding = "utf-8" if mode == "w" else None
    fs, path = get_fs(url, storage_options=storage_options)
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        # "x" mode with a unique name respects the umask (mkstemp would force 0600).
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, mode.replace("w", "x"), encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(directory)
    else:
        with tempfile.NamedTemporaryFile(mode, encoding=encoding, suffix=".upload") as f:
            yield f
            f.flush()
            fs.put_file(f.name, path)
        fs.invalidate_cache(path)


def _fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(url: str, data: bytes, storage_options: StorageOptions = None) -> None:
    """Write `data` to `url` atomically (see `atomic_open`)."""
    with atomic_open(url, "wb", storage_options) as f:
        f.write(data)


def write_json_atomic(url: str, obj: Any, storage_options: StorageOptions = None) -> None:
    """Write `obj` as indented, key-sorted JSON (stable bytes for equal objects), atomically."""
    atomic_write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"), storage_options)


# --------------------------------------------------------------------------- weights cache


def default_cache_dir() -> str:
    """`$TITOK_CACHE`, else ~/.cache/titok-ray."""
    return os.path.expanduser(os.environ.get("TITOK_CACHE") or DEFAULT_CACHE_DIR)


def fetch_to_cache(uri: str, cache_dir: str | None = None, what: str = "weights", option: str = "--teacher") -> str:
    """Local path for `uri`, downloading remote files once into a cache.

    Local paths (and file:// URLs) are returned as they are. http(s)://, s3:// and gs:// files
    (or, on object stores, directories such as a checkpoint's model.safetensors + config.json) are
    downloaded with a progress bar to a temporary name and renamed into
    `<cache_dir>/<hash of URL and endpoint>/<file name>`, so an interrupted download is never
    mistaken for a finished one; a cached file is not checked against the remote again.
    `hf://` names are resolved by `fetch_hf` in huggingface_hub's cache (not `cache_dir`).

    Args:
        uri: local path, URL or `hf://owner/name[@revision][/file]`.
        cache_dir: cache root; default `default_cache_dir()`.
        what: what the file is, for messages ("teacher weights").
        option: the command-line option that named `uri`, for messages.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: an unsupported URL scheme, a malformed hf:// name.
        RuntimeError: the download failed (offline, unreachable, missing, no credentials).
    """
    protocol = protocol_of(uri)
    if protocol in LOCAL_PROTOCOLS:
        path = local_path(uri)
        if not os.path.exists(path):
            # A bare `owner/name` is a relative path here, never a Hub name: say how to name the model.
            hint = f"; for the Hugging Face model {uri} write hf://{uri}" if _BARE_REPO_ID.fullmatch(uri) else ""
            raise FileNotFoundError(f"{option}: {what} {path!r} does not exist{hint}")
        return path
    if protocol == HF_PROTOCOL:
        return fetch_hf(uri, what=what, option=option)
    if protocol not in DOWNLOAD_PROTOCOLS:
        raise ValueError(f"{option}: cannot fetch {uri!r}: use a local path, hf://, http(s)://, s3:// or gs://")

    name = posixpath.basename(urllib.parse.urlsplit(uri).path.rstrip("/")) or "download"
    endpoint = s3_endpoint() if protocol in S3_PROTOCOLS else None
    digest = hashlib.sha256(f"{endpoint or ''}|{uri}".encode()).hexdigest()[:16]
    target = os.path.join(cache_dir or default_cache_dir(), digest, name)
    if os.path.isfile(target) or os.path.isfile(os.path.join(target, DIR_COMPLETE)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        fs, path = get_fs(uri)
        if protocol in HTTP_PROTOCOLS or not fs.isdir(path):
            _download(fs, path, target, f"{what}: {name}")
        else:  # a checkpoint directory (model.safetensors + config.json): its files, flat
            os.makedirs(target, exist_ok=True)
            for info in fs.ls(path, detail=True):
                if info["type"] == "file":
                    base = posixpath.basename(info["name"])
                    _download(fs, info["name"], os.path.join(target, base), f"{what}: {base}")
            open(os.path.join(target, DIR_COMPLETE), "w").close()
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(
            f"{option}: could not download {what} from {uri} ({type(e).__name__}: {reason}); "
            f"pass a local path instead, e.g. {option} /path/to/{name}"
        ) from e
    return target


DIR_COMPLETE = ".complete"  # marks a fully downloaded directory in the cache


def _download(fs: fsspec.AbstractFileSystem, path: str, target: str, desc: str) -> None:
    """One file to `target` via a temporary name, with a progress bar."""
    tmp = f"{target}.{uuid.uuid4().hex}.part"
    try:
        progress = TqdmCallback(tqdm_kwargs={
            "desc": desc, "unit": "B", "unit_scale": True, "unit_divisor": 1024, "mininterval": 1.0,
        })
        fs.get_file(path, tmp, callback=progress)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --------------------------------------------------------------------------- Hugging Face Hub names

# Only `hf://` names reach the Hub. A bare `owner/name` stays a relative local path: the two cannot be
# told apart (`runs/model` is both), and a mistyped local directory must fail here, not turn into a
# download of something else.
_BARE_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HF_URI = re.compile(r"hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[^/]+))?(?:/(?P<file>.+))?")
# A repository in the Hub layout: what titok_core.load_official_dir reads, and all that is downloaded of it.
HUB_LAYOUT_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class HubName:
    """`hf://owner/name[@revision][/file]`: a repository (in the Hub layout), or one file in it."""

    repo_id: str
    revision: str | None = None  # branch, tag or commit; None: main
    filename: str | None = None

    @classmethod
    def parse(cls, uri: str) -> "HubName":
        """The parts of an hf:// name; a revision with "/" in it is written URL-encoded (refs%2Fpr%2F1)."""
        m = _HF_URI.fullmatch(uri.strip())
        if not m:
            raise ValueError(f"{uri!r} is not a Hugging Face Hub name: write hf://owner/name, "
                             "hf://owner/name@revision or hf://owner/name/file")
        revision = urllib.parse.unquote(m["revision"]) if m["revision"] else None
        return cls(m["repo"], revision, m["file"])

    def download_command(self) -> str:
        """The `hf download` command line that puts this name into the Hugging Face cache."""
        files = self.filename or " ".join(HUB_LAYOUT_FILES)
        return f"hf download {self.repo_id} {files}" + (f" --revision {self.revision}" if self.revision else "")


def hf_cache_dir() -> str:
    """Where huggingface_hub keeps its downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else its default
    (~/.cache/huggingface/hub). Read now: huggingface_hub reads them once, at import."""
    from huggingface_hub import constants
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def fetch_hf(uri: str, what: str = "weights", option: str = "--teacher") -> str:
    """Local path of a Hugging Face Hub name, downloaded once into huggingface_hub's cache.

    `hf://owner/name[@revision]` gives the repository's snapshot directory, with only
    HUB_LAYOUT_FILES fetched (the layout titok_core.load_model reads); `hf://owner/name[@revision]/file`
    gives that one file (e.g. an official `.bin`). The cache, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE,
    HF_ENDPOINT and HF_TOKEN work as for every huggingface_hub download (the first three also when set
    after huggingface_hub was imported); offline or with the Hub unreachable, a cached copy is used
    (unreachable: after huggingface_hub's retries, about 20 s for a single file).

    Raises:
        ValueError: a malformed name.
        RuntimeError: one line: not in the cache while offline or unreachable (naming the model, the
            cache directory and the command that pre-fills it), not on the Hub, or another failure.
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = HubName.parse(uri)
    offline, cache = hf_offline(), hf_cache_dir()
    try:
        if name.filename:
            return hf_hub_download(name.repo_id, name.filename, revision=name.revision, cache_dir=cache,
                                   local_files_only=offline)
        path = snapshot_download(name.repo_id, revision=name.revision, allow_patterns=list(HUB_LAYOUT_FILES),
                                 cache_dir=cache, local_files_only=offline)
    except LocalEntryNotFoundError as e:  # not (completely) in the cache, and no way to download it
        reason = "HF_HUB_OFFLINE is set" if offline else _first_line(e.__cause__ or e, "the Hub is unreachable")
        raise RuntimeError(
            f"{option}: {what} {uri} is not in the Hugging Face cache {cache} ({reason}); pre-fill "
            f"the cache on a machine with network: `{name.download_command()}`, then copy that cache here "
            "(or point HF_HOME at a copy)") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise RuntimeError(f"{option}: {what} {uri} is not on the Hugging Face Hub ({_first_line(e)}); "
                           "check the name and revision (a private or gated model needs HF_TOKEN)") from None
    except Exception as e:
        raise RuntimeError(f"{option}: could not download {what} {uri} ({_first_line(e)})") from e
    missing = [f for f in HUB_LAYOUT_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise RuntimeError(
            f"{option}: {uri} has no {' or '.join(missing)} (a Hub-layout model repository holds "
            f"{' + '.join(HUB_LAYOUT_FILES)}); to load one file of the repository, name it: hf://{name.repo_id}"
            f"{'@' + name.revision if name.revision else ''}/<file>")
    return path


def _first_line(e: BaseException, default: str = "") -> str:
    text = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else (default or type(e).__name__)
