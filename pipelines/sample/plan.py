"""What a sampling run generates, fixed by its command alone: classes, samples per class, the chunks
they are cut into, each chunk's seed, and the files each image goes to.

The unit of work and of commit is a chunk: `classes_per_chunk` consecutive classes of the list with
all their samples, in class order. A chunk's random numbers come from its own `torch.Generator`,
seeded from (seed, chunk index) only, so an image depends on the command, never on the number of
workers, on which worker ran its chunk or on the order chunks finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """`per_class` samples of each of `classes`, class after class.

    Args:
        index: place in the plan (names the output files and seeds the chunk's generator).
        classes: the chunk's class labels, in order.
        per_class: samples per class.
    """

    index: int
    classes: tuple[int, ...]
    per_class: int

    @property
    def name(self) -> str:
        return chunk_name(self.index)

    @property
    def labels(self) -> np.ndarray:
        """(n,) int64: the class of each image of the chunk, in order."""
        return np.repeat(np.asarray(self.classes, np.int64), self.per_class)

    @property
    def indices(self) -> np.ndarray:
        """(n,) int64: each image's index among its class's samples."""
        return np.tile(np.arange(self.per_class, dtype=np.int64), len(self.classes))

    def __len__(self) -> int:
        return len(self.classes) * self.per_class


def chunk_name(index: int) -> str:
    return f"chunk-{index:06d}"


def make_chunks(classes: tuple[int, ...], per_class: int, classes_per_chunk: int) -> list[Chunk]:
    """The run's chunks, in class order."""
    return [Chunk(i, tuple(classes[start:start + classes_per_chunk]), per_class)
            for i, start in enumerate(range(0, len(classes), classes_per_chunk))]


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk `index`'s generator: a hash of (seed, index) (numpy's SeedSequence), so
    neighbouring chunks get unrelated streams."""
    low, high = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int(low) | (int(high) & 0x7FFF_FFFF) << 32  # torch seeds are 64-bit; keep it positive


def parse_classes(text: str, num_classes: int) -> tuple[int, ...]:
    """`all`, or a comma list of labels and inclusive ranges ("0-9,207,980") -> labels in order.

    Raises:
        ValueError: one line naming the bad part, a label outside [0, num_classes), or a repeat.
    """
    if text.strip() == "all":
        return tuple(range(num_classes))
    labels: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part[1:]:
                first, last = (int(v) for v in part.split("-", 1))
                if last < first:
                    raise ValueError
                labels.extend(range(first, last + 1))
            else:
                labels.append(int(part))
        except ValueError:
            raise ValueError(f"--classes: {part!r} is not a class label or a range like 0-9 "
                             "(use 'all' or a list such as 0-99,207)") from None
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes: label {bad[0]} is outside the generator's [0, {num_classes})")
    if len(set(labels)) != len(labels):
        repeated = next(c for c in labels if labels.count(c) > 1)
        raise ValueError(f"--classes: label {repeated} is listed twice; raise --per-class for more samples of a class")
    return tuple(labels)


def image_file(label: int, index: int) -> str:
    """An image's PNG, relative to the output: images/<class>/<class>_<index>.png (4 digits each)."""
    return f"images/{label:04d}/{label:04d}_{index:04d}.png"


def image_key(label: int, index: int) -> str:
    return f"{label:04d}_{index:04d}"


STATS_DIR = "_stats"  # under the chunk table: pyarrow's dataset reader skips `_` folders


def stats_path(name: str) -> str:
    """A chunk's statistics file (gFID / IS), relative to the chunk table: _stats/<chunk>.npz."""
    return f"{STATS_DIR}/{name}.npz"
