"""Read one WebDataset shard, turning every defect into a quarantine record instead of an exception.

Ray's `read_webdataset` aborts the whole job on a truncated tar and drops a failing shard
without a counter, so the precompute job reads shards itself: `tarfile` in stream mode ("r|*", plain or compressed)
over an fsspec file (local, s3://, gs://, http(s)://), grouping members into samples the
WebDataset way:

- key = member path up to the first dot of its basename, extension = the rest, lower-cased
  (`train/n01_hen.JPEG` -> key `train/n01_hen`, extension `jpeg`);
- consecutive members with the same key form one sample; image members are jpg / jpeg / png / webp,
  the label is the `cls` member (an ASCII integer);
- companion members that shards in the wild carry beside each image (img2dataset writes `.json`
  and `.txt`; others `.npy`, captions, URLs: `COMPANION_EXTENSIONS`) belong to the sample and are
  ignored.

Records (see `pipelines.quarantine`): a sample is dropped with missing_image, missing_label,
bad_label, label_out_of_range or duplicate_key (key seen earlier in the shard, also by the sample
just before it, the same extension twice in one sample, or two image members; the first sample
with a key is kept); `junk_member` drops only that member (no extension, an unknown one, not a
regular file); `dot_in_name` names a member like `n01_tench.v2.jpg`, whose key ends at the first
dot by the WebDataset convention, so that its extension `v2.jpg` is neither an image nor a label.
A shard that ends early yields every sample completed before the cut, then one `truncated_tar`
record; a damaged header gives `corrupt_tar`, an unopenable shard `unreadable_shard`.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import fsspec

from .quarantine import (
    BAD_LABEL,
    CORRUPT_TAR,
    DOT_IN_NAME,
    DUPLICATE_KEY,
    JUNK_MEMBER,
    LABEL_OUT_OF_RANGE,
    MISSING_IMAGE,
    MISSING_LABEL,
    TRUNCATED_TAR,
    UNREADABLE_SHARD,
    SampleErrorRecord,
    one_line,
)
from .storage import StorageOptions, get_fs

# In the official reader's preference order (`wds.rename(image="jpg;png;jpeg;webp")`).
IMAGE_EXTENSIONS = ("jpg", "png", "jpeg", "webp")
LABEL_EXTENSION = "cls"
# Per-sample metadata shards carry beside the image: part of the sample, not used by these jobs.
COMPANION_EXTENSIONS = frozenset({
    "json", "txt", "text", "caption", "captions", "url", "id", "meta", "npy", "npz", "xml", "csv", "tsv", "yaml",
})
# webdataset's `base_plus_ext`: directory part + basename up to its first dot, then the rest.
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class Sample:
    """One complete sample of a shard.

    Args:
        key: WebDataset key (member path up to the first dot of the basename).
        shard: shard URL as given to `iter_samples`.
        member: name of the image member.
        image: encoded image bytes, as stored.
        ext: image extension, lower-case (jpg, jpeg, png, webp).
        label: integer class label.
    """

    key: str
    shard: str
    member: str
    image: bytes
    ext: str
    label: int


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a tar member name, or None if it has no extension."""
    match = _MEMBER_NAME.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


@dataclass
class _Group:
    """Members read so far for one key."""

    key: str
    members: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # ext -> (member name, data)
    companions: list[str] = field(default_factory=list)  # names of ignored companion members
    problem: str | None = None  # a duplicate_key detail, once one is found


def iter_samples(
    url: str,
    fs: fsspec.AbstractFileSystem | None = None,
    *,
    storage_options: StorageOptions = None,
    num_classes: int | None = None,
    ignore_extensions: Collection[str] = (),
) -> Iterator[Sample | SampleErrorRecord]:
    """Samples and quarantine records of one shard, in stream order; never raises for bad data.

    Args:
        url: shard URL or local path.
        fs: filesystem to read with; default `storage.get_fs(url, storage_options=...)`.
        storage_options: fsspec options when `fs` is not given.
        num_classes: labels must lie in [0, num_classes); None checks only label >= 0.
        ignore_extensions: member extensions to ignore like companions, beyond COMPANION_EXTENSIONS (e.g. {"mp4"}).
    """
    ignore = {e.lower() for e in ignore_extensions}
    try:
        if fs is None:
            fs, path = get_fs(url, storage_options=storage_options)
        else:
            path = fs._strip_protocol(url)
        raw = fs.open(path, "rb")
    except Exception as e:
        yield SampleErrorRecord("", url, "", UNREADABLE_SHARD, one_line(e))
        return

    stop: list[tarfile.HeaderError] = []  # the header error that ended tarfile's iteration
    group: _Group | None = None
    seen: set[str] = set()
    reading = ""  # member being read when an error strikes
    completed = 0
    error: Exception | None = None
    try:
        with raw, tarfile.open(fileobj=raw, mode="r|*", tarinfo=_recording_tarinfo(stop)) as tar:
            for info in tar:
                parsed = split_member_name(info.name) if info.isreg() else None
                if parsed is None or not parsed[1]:
                    kind = "no extension" if info.isreg() else f"not a regular file (tar type {info.type!r})"
                    yield SampleErrorRecord("", url, info.name, JUNK_MEMBER, kind)
                    continue
                key, ext = parsed
                # Two samples in a row with one key: the first is complete when the second's first member repeats
                # an extension, so it is kept, and the second is a duplicate like a later reuse of the key.
                again = group is not None and key == group.key and ext in group.members and _is_complete(group)
                if group is None or key != group.key or again:
                    if group is not None:
                        for out in _finish(group, url, num_classes):
                            completed += isinstance(out, Sample)
                            yield out
                    group = _Group(key)
                    if key in seen:
                        group.problem = "key already used by an earlier sample of this shard"
                    seen.add(key)
                if ext not in IMAGE_EXTENSIONS and ext != LABEL_EXTENSION:
                    last = ext.rsplit(".", 1)[-1]
                    if last in COMPANION_EXTENSIONS or ext in ignore:
                        group.companions.append(info.name)
                    elif "." in ext and (last in IMAGE_EXTENSIONS or last == LABEL_EXTENSION):
                        yield SampleErrorRecord(key, url, info.name, DOT_IN_NAME, _dot_detail(info.name, key, ext))
                    else:
                        yield SampleErrorRecord(key, url, info.name, JUNK_MEMBER, f"unexpected extension .{ext}")
                    continue
                reading = info.name
                data = tar.extractfile(info).read()
                reading = ""
                if ext in group.members:
                    group.problem = f"two .{ext} members for one key"
                group.members.setdefault(ext, (info.name, data))
    except Exception as e:  # a cut or damaged stream, or an I/O error part-way
        error = e

    cut = _classify_end(error, stop[-1] if stop else None)
    if group is not None:
        for out in _finish(group, url, num_classes, cut_short=cut is not None):
            completed += isinstance(out, Sample)
            yield out
    if cut is not None:
        reason, why = cut
        incomplete = group.key if group is not None and not _is_complete(group) else ""
        where = f" inside member {reading!r}" if reading else ""
        yield SampleErrorRecord(incomplete, url, reading, reason, f"after {completed} complete samples{where}: {why}")


def _finish(
    group: _Group, url: str, num_classes: int | None, cut_short: bool = False
) -> Iterator[Sample | SampleErrorRecord]:
    """The Sample or the record for a finished group; nothing for a group of junk members only.
    With `cut_short`, a group missing its image or label was cut by the end of the shard and is
    reported by the truncation record instead."""
    if not group.members:
        if group.companions and not cut_short:  # metadata without its image
            yield SampleErrorRecord(group.key, url, group.companions[0], MISSING_IMAGE,
                                    f"sample has only {', '.join(repr(c) for c in group.companions[:3])}")
        return
    first_member = next(iter(group.members.values()))[0]
    images = [ext for ext in IMAGE_EXTENSIONS if ext in group.members]
    if group.problem is None and len(images) > 1:
        group.problem = "several image members: " + ", ".join(group.members[e][0] for e in images)
    if group.problem is not None:
        yield SampleErrorRecord(group.key, url, first_member, DUPLICATE_KEY, group.problem)
        return
    if not _is_complete(group):
        if not cut_short:
            reason = MISSING_IMAGE if not images else MISSING_LABEL
            yield SampleErrorRecord(group.key, url, first_member, reason, f"sample has only {first_member!r}")
        return
    image_member, image = group.members[images[0]]
    label_member, raw_label = group.members[LABEL_EXTENSION]
    text = raw_label.decode("ascii", errors="replace").strip()
    if _INTEGER.fullmatch(text) is None:
        yield SampleErrorRecord(group.key, url, label_member, BAD_LABEL, f"not an integer: {raw_label[:40]!r}")
        return
    label = int(text)
    if label < 0 or (num_classes is not None and label >= num_classes):
        upper = "" if num_classes is None else f", {num_classes}"
        yield SampleErrorRecord(group.key, url, label_member, LABEL_OUT_OF_RANGE, f"label {label} not in [0{upper})")
        return
    yield Sample(group.key, url, image_member, image, images[0], label)


def _dot_detail(member: str, key: str, ext: str) -> str:
    return (f"{member!r} is key {key!r} with extension .{ext}: a WebDataset key ends at the first dot of the file "
            f"name, so .{ext} is neither an image nor a label; rename the file without dots before its extension "
            "(jobs/make_shards.py turns them into '_')")


def _is_complete(group: _Group) -> bool:
    return LABEL_EXTENSION in group.members and any(ext in group.members for ext in IMAGE_EXTENSIONS)


def _classify_end(error: Exception | None, stop: tarfile.HeaderError | None) -> tuple[str, str] | None:
    """(reason, detail) if the stream did not end with a tar end-of-archive block, else None.

    tarfile ends iteration silently on an empty, short or invalid header after the first
    member, which is how a shard cut at a member boundary looks; only an all-zero block is a
    real end of archive.
    """
    if error is None:
        if isinstance(stop, tarfile.EOFHeaderError):
            return None
        if isinstance(stop, tarfile.InvalidHeaderError):
            return CORRUPT_TAR, f"damaged tar header ({stop})"
        return TRUNCATED_TAR, f"no end-of-archive block ({stop or 'stream ended'})"
    if isinstance(stop, tarfile.InvalidHeaderError) and isinstance(error, tarfile.ReadError):
        return CORRUPT_TAR, f"not a tar or damaged header ({error})"
    if isinstance(error, (tarfile.ReadError, EOFError)):
        return TRUNCATED_TAR, one_line(error)
    return UNREADABLE_SHARD, one_line(error)


def _recording_tarinfo(stop: list[tarfile.HeaderError]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records the header error that made tarfile stop reading."""

    class RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
            try:
                return super().frombuf(buf, encoding, errors)
            except tarfile.HeaderError as e:
                stop.append(e)
                raise

    return RecordingTarInfo

