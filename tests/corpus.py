"""Builders for test images, good and broken, as encoded bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines import quarantine as q


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """An RGB image whose pixels differ everywhere (so crops and flips are distinguishable)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def with_fake_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims width x height: a few KB that decode to a huge image."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9 :]


def header_only(jpeg: bytes) -> bytes:
    """Every JPEG header segment, cut right before the compressed scan data."""
    return jpeg[: jpeg.index(b"\xff\xda")]


def exif_rotated_jpeg(width: int = 40, height: int = 20) -> bytes:
    """Left half red, right half blue, stored width x height with EXIF orientation 6 (display
    rotated 90 degrees clockwise: height x width, red on top)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (255, 0, 0)
    rgb[:, width // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())


def palette_png_with_transparency() -> bytes:
    """4x2 palette image: index 0 = red and fully transparent, index 1 = opaque green."""
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    return encode(image, "PNG", transparency=0)


def rgba_png() -> bytes:
    """2x1: a transparent pure-black pixel, then an opaque blue one."""
    return encode(Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 255, 255]]], np.uint8), "RGBA"), "PNG")


def png16(values: list[int]) -> bytes:
    """1-row 16-bit grayscale PNG (Pillow mode I;16)."""
    return encode(Image.fromarray(np.array([values], np.uint16)), "PNG")


def image_corpus(real_jpeg: bytes) -> dict[str, tuple[bytes, str | None]]:
    """name -> (encoded bytes, the quarantine reason expected, or None for an image that must decode)."""
    small = encode(gradient(64, 48), "JPEG", quality=90)
    png = encode(gradient(64, 48), "PNG")
    return {
        "real_jpeg": (real_jpeg, None),
        "grayscale_jpeg": (encode(gradient(64, 48).convert("L"), "JPEG"), None),
        "cmyk_jpeg": (encode(gradient(64, 48).convert("CMYK"), "JPEG"), None),
        "palette_png_transparent": (palette_png_with_transparency(), None),
        "rgba_png": (rgba_png(), None),
        "png16": (png16([0, 1000, 32896, 65535]), None),
        "exif_rotated_jpeg": (exif_rotated_jpeg(), None),
        "webp": (encode(gradient(64, 48), "WEBP"), None),
        "empty": (b"", q.EMPTY),
        "random_bytes": (np.random.default_rng(0).bytes(4096), q.UNDECODABLE),
        "html_named_jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", q.UNDECODABLE),
        "truncated_jpeg": (real_jpeg[: len(real_jpeg) // 2], q.TRUNCATED),
        "header_only_jpeg": (header_only(real_jpeg), q.TRUNCATED),
        "truncated_png": (png[: len(png) // 2], q.TRUNCATED),
        "bomb_65000x65000": (with_fake_size(small, 65000, 65000), q.DECOMPRESSION_BOMB),
        "too_large_8000x7000": (with_fake_size(small, 8000, 7000), q.TOO_LARGE),
        "aspect_4000x2": (encode(gradient(4000, 2), "PNG"), q.EXTREME_ASPECT_RATIO),
        "gif": (encode(gradient(64, 48), "GIF"), q.UNSUPPORTED_FORMAT),
    }
