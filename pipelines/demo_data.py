"""Demo images: public-domain photographs that ship inside scikit-image, several crops each.

The demo must run offline on a fresh machine, so its data comes from a PyPI package rather than a
download. Each photo gives `crops` overlapping crops (label = photo index), enough images for the
whole pipeline to train on in minutes. A user folder (`--images DIR`) replaces them.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

# Photographs (not drawings or test charts) among scikit-image's bundled data files.
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "retina.jpg", "camera.png", "grass.png", "gravel.png", "brick.png", "ihc.png",
    "moon.png", "coins.png",
)


def skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError:
        raise RuntimeError("the demo photos come from scikit-image: pip install scikit-image "
                           "(or pass your own folder with --images DIR)") from None
    return Path(os.path.dirname(skimage.__file__)) / "data"


def crop_boxes(width: int, height: int, crops: int, fraction: float = 0.75) -> list[tuple[int, int, int, int]]:
    """`crops` square boxes of `fraction` x the short side, spread over the image (deterministic)."""
    side = int(min(width, height) * fraction)
    anchors = [(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.5, 0.0), (0.5, 1.0), (0.0, 0.5)]
    boxes = []
    for ax, ay in (anchors * (crops // len(anchors) + 1))[:crops]:
        left, top = int(ax * (width - side)), int(ay * (height - side))
        boxes.append((left, top, left + side, top + side))
    return boxes


def write_demo_images(dest: Path, photos: int | None = None, crops: int = 4) -> Path:
    """Write crops of the bundled photos as an ImageFolder (`dest/<photo>/<photo>_<i>.png`)."""
    src = skimage_data_dir()
    for name in SKIMAGE_PHOTOS[:photos]:
        image = Image.open(src / name).convert("RGB")
        stem = name.rsplit(".", 1)[0]
        (dest / stem).mkdir(parents=True, exist_ok=True)
        for i, box in enumerate(crop_boxes(*image.size, crops)):
            image.crop(box).save(dest / stem / f"{stem}_{i}.png")
    return dest
