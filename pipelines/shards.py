"""Pack an image dataset into WebDataset tar shards, byte-identical on every run.

Shards are `<prefix>-000000.tar, <prefix>-000001.tar, ...`; each sample is two members,
`<key>.<ext>` (the original file bytes, never re-encoded; ext = jpg / png / webp from the
content, so a PNG named .JPEG is stored as .png) and `<key>.cls` (the label as ASCII digits).
Members carry fixed metadata (mtime 0, uid / gid 0, no user / group names, mode 0644) and samples
are written in sorted key order (or a seeded shuffle of it), so two runs give the same bytes.

Sources (`collect_images`):
- ImageFolder: `root/<class>/.../<image>`, labels = index of the class directory in sorted order
  (torchvision's convention), or from a synset list; key `<class>/<stem>`.
- flat ImageNet-style directory: `root/n01514859_hen.JPEG`, labels from a TSV with a header
  (`class_index` plus `file` and / or `wnid` columns, like imagenet-sample/labels.tsv) or from a
  synset list (one wnid per line, first token, label = line number); key `<stem>`.
- list file: `path<TAB>label` lines (`#` comments; relative paths are relative to the list
  file); key = path relative to the images' common directory, without extension.
Dots in a key's basename become "_", since WebDataset ends the key at the first dot.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import random
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .storage import StorageOptions, atomic_open, join_url, list_dir, remove

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
LAYOUTS = ("auto", "imagefolder", "flat", "list")
SHARD_NAME = "{prefix}-{index:06d}.tar"

# (key, image bytes or None, image extension, label or None). None leaves the member out and a
# str / bytes label is written verbatim: tests use both to build broken shards on purpose.
ShardSample = tuple[str, bytes | None, str, int | str | bytes | None]


@dataclass(frozen=True)
class SourceImage:
    """One image file to pack: its sample key, local path and integer label."""

    key: str
    path: str
    label: int


@dataclass(frozen=True)
class LabelTable:
    """Labels for a flat directory, by file name first, else by the wnid the name starts with."""

    source: str
    by_file: Mapping[str, int] = field(default_factory=dict)
    by_wnid: Mapping[str, int] = field(default_factory=dict)

    def label_for(self, file_name: str) -> int | None:
        """Label of `file_name` (`n01514859_hen.JPEG` -> by file, else by wnid `n01514859`)."""
        if file_name in self.by_file:
            return self.by_file[file_name]
        return self.by_wnid.get(file_name.split("_", 1)[0])


# --------------------------------------------------------------------------- labels


def read_labels_tsv(path: str) -> LabelTable:
    """Labels from a TSV with a header row: `class_index` and `file` and / or `wnid` columns."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    columns = set(rows[0]) if rows else set()
    if "class_index" not in columns or not columns & {"file", "wnid"}:
        raise ValueError(
            f"labels file {path!r} needs a header with class_index and file or wnid columns, got {sorted(columns)}")
    by_file: dict[str, int] = {}
    by_wnid: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        label = _parse_label(row["class_index"], f"{path}:{line}")
        if row.get("file"):
            by_file[row["file"]] = label
        wnid = row.get("wnid")
        if wnid:
            if by_wnid.setdefault(wnid, label) != label:
                raise ValueError(f"{path}:{line}: wnid {wnid} has class_index {label} here and {by_wnid[wnid]} earlier")
    return LabelTable(path, by_file, by_wnid)


def read_synset_list(path: str) -> LabelTable:
    """Labels from a synset list: one wnid per line (first token), label = 0-based line number
    (the format of LOC_synset_mapping.txt: `n01440764 tench, Tinca tinca`)."""
    with open(path, encoding="utf-8") as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"synset list {path!r} names a wnid twice")
    return LabelTable(path, by_wnid={wnid: i for i, wnid in enumerate(wnids)})


def _parse_label(text: str, where: str) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise ValueError(f"{where}: label {text!r} is not a non-negative integer")
    return int(text)


# --------------------------------------------------------------------------- sources


def sample_key(relative_path: str) -> str:
    """WebDataset key of a file: path without extension, dots in the basename made "_"."""
    directory, name = os.path.split(os.path.splitext(relative_path)[0])
    return "/".join(p for p in (directory.replace(os.sep, "/"), name.replace(".", "_")) if p)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def detect_layout(source: str) -> str:
    """"list" for a file, "flat" for a directory with images at its top level, "imagefolder"
    for a directory of class directories."""
    if os.path.isfile(source):
        return "list"
    if not os.path.isdir(source):
        raise ValueError(f"source {source!r} is neither a directory nor a list file")
    with os.scandir(source) as scan:
        entries = list(scan)
    if any(e.is_file() and _is_image(e.name) for e in entries):
        return "flat"
    return "imagefolder" if any(e.is_dir() and not e.name.startswith(".") for e in entries) else "flat"


def collect_imagefolder(root: str, synsets: LabelTable | None = None) -> list[SourceImage]:
    """Images under `root/<class>/` (recursively); label = sorted class index, or the class
    directory's wnid in `synsets`."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    images = []
    for index, name in enumerate(classes):
        label = index
        if synsets is not None:
            if name not in synsets.by_wnid:
                raise ValueError(f"class directory {name!r} is not in synset list {synsets.source!r}")
            label = synsets.by_wnid[name]
        for directory, subdirs, files in os.walk(os.path.join(root, name)):
            subdirs.sort()
            for file in sorted(f for f in files if _is_image(f)):
                path = os.path.join(directory, file)
                images.append(SourceImage(sample_key(os.path.relpath(path, root)), path, label))
    return images


def collect_flat(root: str, labels: LabelTable) -> list[SourceImage]:
    """Images directly in `root`, labelled by file name or wnid prefix through `labels`."""
    images, unlabelled = [], []
    for file in sorted(f for f in os.listdir(root) if _is_image(f)):
        label = labels.label_for(file)
        if label is None:
            unlabelled.append(file)
        else:
            images.append(SourceImage(sample_key(file), os.path.join(root, file), label))
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} image(s) in {root!r} have no label in {labels.source!r}, e.g. {unlabelled[0]!r}")
    return images


def collect_list(list_file: str) -> list[SourceImage]:
    """Images of a `path<TAB>label` list file; keys relative to the images' common directory."""
    base = os.path.dirname(os.path.abspath(list_file))
    entries = []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" not in line:
                raise ValueError(f"{list_file}:{number}: expected 'path<TAB>label', got {line[:80]!r}")
            path, label = line.rsplit("\t", 1)
            entries.append((os.path.join(base, os.path.expanduser(path)), _parse_label(label, f"{list_file}:{number}")))
    if not entries:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p, _ in entries])
    return [SourceImage(sample_key(os.path.relpath(p, root)), p, label) for p, label in entries]


def collect_images(
    source: str, layout: str = "auto", labels: str | None = None, synset_list: str | None = None
) -> list[SourceImage]:
    """The images of `source`, sorted by key, with unique keys.

    Args:
        source: ImageFolder root, flat directory or list file (local).
        layout: one of LAYOUTS; "auto" uses `detect_layout`.
        labels: TSV labels file (flat layout).
        synset_list: wnid-per-line file (flat or ImageFolder layout).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if labels and synset_list:
        raise ValueError("pass either --labels or --synset-list, not both")
    layout = detect_layout(source) if layout == "auto" else layout
    table = read_labels_tsv(labels) if labels else read_synset_list(synset_list) if synset_list else None
    if layout == "list":
        images = collect_list(source)
    elif layout == "imagefolder":
        images = collect_imagefolder(source, table)
    elif not any(_is_image(f) for f in os.listdir(source)):
        images = []  # an empty folder, or one without images: say so, not "pass --labels"
    elif table is None:
        raise ValueError(f"{source!r} is a flat directory: pass --labels FILE.tsv or --synset-list FILE for its labels")
    else:
        images = collect_flat(source, table)
    if not images:
        raise ValueError(f"no .jpg/.jpeg/.png/.webp images found in {source!r} ({layout} layout)")
    images.sort(key=lambda im: im.key)
    for a, b in zip(images, images[1:]):
        if a.key == b.key:
            raise ValueError(f"{a.path!r} and {b.path!r} both map to sample key {a.key!r}; rename one")
    return images


# --------------------------------------------------------------------------- writing


def real_extension(data: bytes, fallback: str) -> str:
    """jpg / png / webp from the file signature; `fallback` (lower-cased, jpeg -> jpg) otherwise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    fallback = fallback.lower().lstrip(".")
    return "jpg" if fallback == "jpeg" else fallback


def read_source(images: Iterable[SourceImage]) -> Iterator[ShardSample]:
    """Shard samples with the original bytes of each image file."""
    for image in images:
        with open(image.path, "rb") as f:
            data = f.read()
        yield image.key, data, real_extension(data, os.path.splitext(image.path)[1]), image.label


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: identical bytes on every run
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def existing_shards(output: str, prefix: str, storage_options: StorageOptions = None) -> list[str]:
    """URLs of `<prefix>-NNNNNN.tar` files already in `output`, sorted."""
    pattern = re.compile(re.escape(prefix) + r"-[0-9]{6}\.tar")
    return [u for u in list_dir(output, storage_options) if pattern.fullmatch(u.rstrip("/").rsplit("/", 1)[-1])]


def write_shards(
    samples: Iterable[ShardSample],
    output: str,
    samples_per_shard: int,
    *,
    prefix: str = "train",
    overwrite: bool = False,
    storage_options: StorageOptions = None,
) -> list[str]:
    """Write `samples` as tar shards of `samples_per_shard` samples into `output`, each atomically.

    Members are written as given (see `ShardSample`), without validation, so broken shards can
    be built on purpose. With `overwrite`, shards of an earlier, longer run are deleted.

    Returns:
        the shard URLs, in order.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if not prefix or "/" in prefix:
        raise ValueError(f"shard prefix must be a non-empty file name part, got {prefix!r}")
    old = existing_shards(output, prefix, storage_options)
    if old and not overwrite:
        raise ValueError(
            f"{output!r} already holds {len(old)} shard(s) named {prefix}-*.tar; pass --overwrite or another --output")
    urls: list[str] = []
    iterator = iter(samples)
    while chunk := list(itertools.islice(iterator, samples_per_shard)):
        url = join_url(output, SHARD_NAME.format(prefix=prefix, index=len(urls)))
        with atomic_open(url, "wb", storage_options) as f, \
                tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for key, data, ext, label in chunk:
                if data is not None:
                    _add_member(tar, f"{key}.{ext}", data)
                if label is not None:
                    _add_member(tar, f"{key}.cls", label if isinstance(label, bytes) else str(label).encode())
        urls.append(url)
    for stale in old[len(urls):]:
        remove(stale, storage_options)
    return urls


def pack(
    images: Sequence[SourceImage],
    output: str,
    samples_per_shard: int,
    *,
    prefix: str = "train",
    shuffle_seed: int | None = None,
    overwrite: bool = False,
    storage_options: StorageOptions = None,
) -> dict[str, int]:
    """Write `images` as shards, in key order or a shuffle seeded by `shuffle_seed`.

    Returns:
        manifest: shard file name -> number of samples, in shard order.
    """
    order = sorted(images, key=lambda im: im.key)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    urls = write_shards(read_source(order), output, samples_per_shard, prefix=prefix, overwrite=overwrite,
                        storage_options=storage_options)
    counts = [min(samples_per_shard, len(order) - i * samples_per_shard) for i in range(len(urls))]
    return {url.rstrip("/").rsplit("/", 1)[-1]: count for url, count in zip(urls, counts)}
