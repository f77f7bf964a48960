"""Image bytes -> the official TiTok base image, or a `SampleError` saying why not.

The official pipeline (bytedance/1d-tokenizer, `data/webdataset_reader.py`):
    wds.decode(ImageHandler("pil"))   # PIL.Image.open; img.load(); img.convert("RGB")
    transforms.Resize(256, interpolation=BICUBIC, antialias=True)   # shorter side -> 256
    train: RandomCrop(256) + RandomHorizontalFlip()   eval: CenterCrop(256)
    ToTensor()   # [0, 1]; Normalize(mean 0, std 1) is the identity
`decode_and_preprocess` stops after the resize and returns the base image; crops and flips are
`pipelines.views`. The resize is that same torchvision `Resize` on the same PIL image, so pixels
are identical: the long side becomes int(256 * long / short) (truncated, not rounded), and
Pillow's bicubic filter always antialiases.

Deviations from the official reader, all on images it would mishandle:
- EXIF orientation is applied (`ImageOps.exif_transpose`); the official reader ignores it, so
  phone photos come out sideways there. Orientation 1 or no EXIF (all of ImageNet): no change.
- Transparent images (RGBA, LA, palette or L/RGB with a transparency key) are composited onto
  white; the official `convert("RGB")` drops alpha and shows whatever colour hides under it.
- 16-bit grayscale (`I;16`, `I`) is scaled to 8 bits; `convert("RGB")` clips it at 255 (white).
- Pillow's decompression-bomb guard stays on (the official reader sets
  `Image.MAX_IMAGE_PIXELS = None`), and `max_pixels` / `max_aspect_ratio` are checked from the
  header before any pixel is decoded: a 4000x2 image would resize to 512000x256.
- Only JPEG (incl. multi-picture), PNG and WebP content is decoded; GIF, BMP, TIFF ... are
  `unsupported_format` (smaller decoder attack surface; ImageNet has none).
Grayscale, palette and CMYK images without transparency convert exactly as the official reader does.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms

from .quarantine import (
    DECOMPRESSION_BOMB,
    EMPTY,
    EXTREME_ASPECT_RATIO,
    TOO_LARGE,
    TRUNCATED,
    UNDECODABLE,
    UNSUPPORTED_FORMAT,
    SampleError,
    one_line,
)

# Pillow format ids tried by Image.open; multi-picture JPEGs open through "JPEG" (as MPO).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# 50 MP decodes to 150 MB of RGB: room for any camera photo, far from a bomb.
DEFAULT_MAX_PIXELS = 50_000_000
# Bounds the resized base image to 10x its short side (2560x256 at 256).
DEFAULT_MAX_ASPECT_RATIO = 10.0
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def decode_and_preprocess(
    data: bytes,
    *,
    resolution: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Decode image bytes and resize the shorter side to `resolution` like the official reader.

    Args:
        data: encoded JPEG / PNG / WebP bytes.
        resolution: target length of the shorter side.
        max_pixels: largest width * height accepted, read from the header before decoding.
        max_aspect_ratio: largest long side / short side accepted.

    Returns:
        image: (H, W, 3) uint8 with min(H, W) == resolution, not yet cropped.

    Raises:
        SampleError: with reason empty, undecodable, truncated, decompression_bomb, too_large,
            extreme_aspect_ratio or unsupported_format.
    """
    image = open_checked(data, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise SampleError(DECOMPRESSION_BOMB, str(e)) from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError ... on corrupt data
        raise SampleError(TRUNCATED if _looks_cut(data, e) else UNDECODABLE, one_line(e)) from None
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a malformed EXIF block: keep the pixels as stored, like the official reader
        pass
    return np.array(resize_shorter_side(to_rgb(image), resolution))


def open_checked(data: bytes, *, max_pixels: int, max_aspect_ratio: float) -> Image.Image:
    """Parse the header only (no pixels decoded) and reject what must not be decoded.

    Returns:
        The opened, not yet loaded, PIL image.
    """
    if not data:
        raise SampleError(EMPTY, "0 bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise SampleError(DECOMPRESSION_BOMB, str(e)) from None
    except UnidentifiedImageError:
        other = _identify(data)
        if other is not None:
            raise SampleError(UNSUPPORTED_FORMAT, f"{other} image; accepted: JPEG, PNG, WebP") from None
        if _looks_cut(data):
            raise SampleError(TRUNCATED, f"{len(data)} bytes, cut before the image header ends") from None
        raise SampleError(UNDECODABLE, f"not an image Pillow can identify (starts with {data[:16]!r})") from None
    except Exception as e:
        raise SampleError(TRUNCATED if _looks_cut(data, e) else UNDECODABLE, one_line(e)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise SampleError(TOO_LARGE, f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
    if min(width, height) < 1 or max(width, height) / min(width, height) > max_aspect_ratio:
        raise SampleError(EXTREME_ASPECT_RATIO, f"{width}x{height}: aspect ratio above {max_aspect_ratio}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: `convert("RGB")` as the official reader, except that
    transparency is composited onto white and 16-bit grayscale is scaled, not clipped."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


@functools.lru_cache(maxsize=8)
def _official_resize(resolution: int) -> transforms.Resize:
    # The exact transform object of the official ImageTransform (train and eval alike).
    return transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)


def resize_shorter_side(image: Image.Image, resolution: int = 256) -> Image.Image:
    """Shorter side -> `resolution` with torchvision's bicubic `Resize` (official numerics)."""
    return _official_resize(resolution)(image)


def _identify(data: bytes) -> str | None:
    """Format name if Pillow recognises `data` as an image outside ALLOWED_FORMATS (header only)."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return other.format
    except Exception:
        return None


def _looks_cut(data: bytes, error: Exception | None = None) -> bool:
    """True if a decode failure is explained by the bytes ending early."""
    if error is not None and "truncated" in str(error).lower():
        return True
    body = data.rstrip(b"\0")
    if data.startswith(b"\xff\xd8\xff"):  # JPEG ends with EOI
        return not body.endswith(b"\xff\xd9")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):  # PNG ends with the IEND chunk
        return not body.endswith(b"IEND\xaeB`\x82")
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":  # RIFF header carries the size
        return len(data) < 8 + int.from_bytes(data[4:8], "little")
    return False

