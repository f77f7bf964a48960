"""Deterministic crops + flips of the resized base image that stand in for the official
train-time random crop and flip.

The official training transform (bytedance/1d-tokenizer, `data/webdataset_reader.py`) is
`Resize(256)` -> `RandomCrop(256)` -> `RandomHorizontalFlip()`. After the resize the short side is
exactly 256, so the random crop only moves along the long side: its offset is uniform over the
L - 256 + 1 integer positions (L = long side), and the flip is a fair coin, independent of it.

A view is (offset fraction along the long side, flip). View sets:
- `center`: [(0.5, no flip)], exactly the official eval `CenterCrop(256)` (torchvision rounds
  (L - 256) / 2 half-to-even; `apply_view` computes round(0.5 * (L - 256)), the same number).
- `center-flip`: the centre crop and its mirror image (as the official pretokenization script
  encodes each image and its flip).
- `offsets-K`: K offsets x {no flip, flip}. The offset range [0, L - 256] is cut into K equal
  strata and each view takes its stratum's midpoint, fraction (2k + 1) / (2K); with the flip,
  each of the 2K views stands for probability 1 / (2K) of the official (offset, flip)
  distribution, a stratified quadrature of it. K = 1 is `center-flip`. For a square image every
  offset gives the same crop.
Order is deterministic: offsets from start (top / left) to end, and for each offset no flip, then flip.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

VIEW_SET_NAMES = ("center", "center-flip", "offsets-K")


class View(NamedTuple):
    """One deterministic crop: `offset` in [0, 1] along the long side (0 = top / left,
    1 = bottom / right, 0.5 = centre); `flip` mirrors left-right after cropping."""

    offset: float
    flip: bool


def view_specs(name: str) -> list[View]:
    """The views of the view set `name`: "center", "center-flip" or "offsets-K" (e.g. "offsets-4")."""
    if name == "center":
        return [View(0.5, False)]
    if name == "center-flip":
        return [View(0.5, False), View(0.5, True)]
    match = re.fullmatch(r"offsets-([1-9][0-9]*)", name)
    if match is None:
        raise ValueError(f"unknown view set {name!r}; use center, center-flip or offsets-K (e.g. offsets-4)")
    k = int(match.group(1))
    return [View((2 * i + 1) / (2 * k), flip) for i in range(k) for flip in (False, True)]


def crop_start(length: int, crop: int, fraction: float) -> int:
    """First pixel of a `crop`-long window at `fraction` of the free range of a `length`-long axis."""
    if length < crop:
        raise ValueError(f"image side {length} is shorter than the crop {crop}; resize the short side to {crop} first")
    return int(round(fraction * (length - crop)))


def apply_view(image: np.ndarray, view: View, crop: int = 256) -> np.ndarray:
    """Crop `image` at the view's offset along its long side (centred on the short side) and flip.

    Args:
        image: (H, W, 3) uint8 base image, min(H, W) == crop (see `images.decode_and_preprocess`).
        view: where to crop and whether to flip.
        crop: output side.

    Returns:
        (crop, crop, 3) uint8, C-contiguous.
    """
    if not 0.0 <= view.offset <= 1.0:
        raise ValueError(f"view offset {view.offset} is outside [0, 1]")
    height, width = image.shape[:2]
    along_height = height > width
    top = crop_start(height, crop, view.offset if along_height else 0.5)
    left = crop_start(width, crop, 0.5 if along_height else view.offset)
    out = image[top : top + crop, left : left + crop]
    if view.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
