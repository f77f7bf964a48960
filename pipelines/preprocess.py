"""Every pixel the jobs feed a model comes from here: bytes -> base image -> view crop -> model input.

    decode_and_preprocess   image bytes -> the official base image (shorter side = resolution), or
                            a `SampleError` saying why not
    view_specs / View       the deterministic crops + flips that stand in for the official random ones
    view_offset             where a view's crop starts, in pixels, along the long side
    crop_view               THE crop / flip: base image + (pixel offset, flip) -> (crop, crop, 3)
    apply_view              crop_view at a View's offset
    encode_stored_image     the base image as stored in a proxy dataset (zstd, PNG or JPEG), and the
                            pixels a reader of those bytes decodes
    decode_stored_image     stored bytes -> (H, W, 3) uint8 (every reader of a proxy dataset)
    decode_stored_crop      stored bytes -> one view's crop, decoding only what it needs (training)
    to_model_input          (B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on a device
    to_uint8                (B, 3, H, W) float -> (B, H, W, 3) uint8, clamped and rounded

Precompute, tokenize, training, the demo and evaluation all call these functions, so they see
identical pixels by construction.

## The official pipeline (bytedance/1d-tokenizer, `data/webdataset_reader.py`)

    wds.decode(ImageHandler("pil"))   # PIL.Image.open; img.load(); img.convert("RGB")
    transforms.Resize(256, interpolation=BICUBIC, antialias=True)   # shorter side -> 256
    train: RandomCrop(256) + RandomHorizontalFlip()   eval: CenterCrop(256)
    ToTensor()   # [0, 1]; Normalize(mean 0, std 1) is the identity

`decode_and_preprocess` stops after the resize and returns the base image. The resize does what that
torchvision `Resize` does to a PIL image (its size rule, then the same Pillow call), so pixels are
identical: the long side becomes int(256 * long / short) (truncated, not rounded), and Pillow's
bicubic filter always antialiases. torchvision itself is not imported (decode workers start faster).

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

## Views

The official training transform is `Resize(256)` -> `RandomCrop(256)` -> `RandomHorizontalFlip()`.
After the resize the short side is exactly 256, so the random crop only moves along the long side:
its offset is uniform over the L - 256 + 1 integer positions (L = long side), and the flip is a
fair coin, independent of it. A view is (offset fraction along the long side, flip). View sets:
- `center`: [(0.5, no flip)], exactly the official eval `CenterCrop(256)` (torchvision rounds
  (L - 256) / 2 half-to-even; `view_offset` computes round(0.5 * (L - 256)), the same number).
- `center-flip`: the centre crop and its mirror image (as the official pretokenization script
  encodes each image and its flip).
- `offsets-K`: K offsets x {no flip, flip}. The offset range [0, L - 256] is cut into K equal
  strata and each view takes its stratum's midpoint, fraction (2k + 1) / (2K); with the flip,
  each of the 2K views stands for probability 1 / (2K) of the official (offset, flip)
  distribution, a stratified quadrature of it. K = 1 is `center-flip`. For a square image every
  offset gives the same crop.
Order is deterministic: offsets from start (top / left) to end, and for each offset no flip, then flip.
A dataset stores each view as its pixel offset and flip (`view_offsets`, `view_flips`), so a
reader crops with `crop_view` and never recomputes a fraction.
"""

from __future__ import annotations

import functools
import io
import re
import struct
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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

if TYPE_CHECKING:
    import torch

# Pillow format ids tried by Image.open; multi-picture JPEGs open through "JPEG" (as MPO).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# 50 MP decodes to 150 MB of RGB: room for any camera photo, far from a bomb.
DEFAULT_MAX_PIXELS = 50_000_000
# Bounds the resized base image to 10x its short side (2560x256 at 256).
DEFAULT_MAX_ASPECT_RATIO = 10.0
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# How a proxy dataset stores its base images (benchmarks/image_storage.py measures them side by side):
#   "zstd"  lossless: RGB bytes, each row's pixels as differences to their left neighbour, zstd
#           (`_ZSTD_MAGIC` + height + width + the compressed bytes); about PNG's size, ~7x faster to read
#   "png"   lossless, the universal format (compress level 1)
#   "jpeg"  lossy, ~3x smaller: quality 95, no chroma subsampling
STORED_IMAGE_FORMATS = ("zstd", "png", "jpeg")
DEFAULT_STORED_IMAGE_FORMAT = "zstd"
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1
ZSTD_LEVEL = 1  # decompression speed does not depend on it; level 3 is 1% smaller and slower to write
_ZSTD_MAGIC = b"TZD1"


# --------------------------------------------------------------------------------------------
# Bytes -> base image


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


def resize_shorter_side(image: Image.Image, resolution: int = 256) -> Image.Image:
    """Shorter side -> `resolution`, bicubic: the official torchvision `Resize(resolution, BICUBIC,
    antialias=True)` on a PIL image, done as it does it (same size rule, same Pillow call), so pixels
    are identical without importing torchvision in every decode worker (tests/test_images.py checks
    against torchvision itself)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resolution, int(resolution * long / short)  # torchvision truncates, not rounds
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size == (w, h):
        return image  # torchvision returns the image itself when nothing changes
    return image.resize(size, Image.BICUBIC)


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


# --------------------------------------------------------------------------------------------
# Views and the crop


class View(NamedTuple):
    """One deterministic crop: `offset` in [0, 1] along the long side (0 = top / left,
    1 = bottom / right, 0.5 = centre); `flip` mirrors left-right after cropping."""

    offset: float
    flip: bool


CENTER = View(0.5, False)


def view_specs(name: str) -> list[View]:
    """The views of the view set `name`: "center", "center-flip" or "offsets-K" (e.g. "offsets-4")."""
    if name == "center":
        return [CENTER]
    if name == "center-flip":
        return [CENTER, View(0.5, True)]
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


def view_offset(height: int, width: int, view: View, crop: int = 256) -> int:
    """Pixel offset of `view`'s crop along the long side of a (height, width) base image."""
    if not 0.0 <= view.offset <= 1.0:
        raise ValueError(f"view offset {view.offset} is outside [0, 1]")
    crop_start(min(height, width), crop, 0.5)  # the short side must hold the crop whole
    return crop_start(max(height, width), crop, view.offset)


def crop_view(image: np.ndarray, offset: int, flip: bool, crop: int = 256) -> np.ndarray:
    """The one crop of the project: (H, W, 3) base image with min(H, W) == crop -> (crop, crop, 3).

    Args:
        image: base image (see `decode_and_preprocess`); the short side is taken whole, from its start.
        offset: first pixel of the crop along the long side (rows if H > W, else columns).
        flip: mirror left-right after cropping.
        crop: output side.

    Returns:
        (crop, crop, 3) uint8, C-contiguous.
    """
    h, w = image.shape[:2]
    out = image[offset:offset + crop, :crop] if h > w else image[:crop, offset:offset + crop]
    if out.shape[:2] != (crop, crop):
        raise ValueError(f"view at offset {offset} of a {h}x{w} image is not a {crop}x{crop} crop")
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def apply_view(image: np.ndarray, view: View, crop: int = 256) -> np.ndarray:
    """`crop_view` at the view's offset: (H, W, 3) base image -> (crop, crop, 3) uint8."""
    return crop_view(image, view_offset(image.shape[0], image.shape[1], view, crop), view.flip, crop)


# --------------------------------------------------------------------------------------------
# Stored base images


def encode_stored_image(pixels: np.ndarray, image_format: str) -> tuple[bytes, np.ndarray]:
    """Store a base image; returns (bytes, the pixels a reader of those bytes decodes).

    zstd and PNG are lossless (the pixels come back as they are); JPEG is decoded again here so that
    whatever is computed from the returned pixels matches what every later reader of the stored
    bytes sees.
    """
    if image_format not in STORED_IMAGE_FORMATS:
        raise ValueError(f"stored image format {image_format!r}: use one of {STORED_IMAGE_FORMATS}")
    if image_format == "zstd":
        h, w = pixels.shape[:2]
        delta = np.array(pixels, dtype=np.uint8, order="C")
        delta[:, 1:] -= pixels[:, :-1]  # uint8 arithmetic wraps: exact, and undone by a cumulative sum
        body = _zstd().compress(delta, asbytes=True)
        return _ZSTD_MAGIC + struct.pack("<II", h, w) + body, pixels
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buf.getvalue(), pixels
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    data = buf.getvalue()
    return data, decode_stored_image(data)


def decode_stored_image(data: bytes) -> np.ndarray:
    """A stored base image (zstd, PNG or JPEG bytes from a proxy dataset; the format is read from the
    bytes) -> (H, W, 3) uint8."""
    if data[:4] == _ZSTD_MAGIC:
        h, w = struct.unpack_from("<II", data, 4)
        raw = _zstd().decompress(memoryview(data)[12:], decompressed_size=h * w * 3)
        return np.cumsum(np.frombuffer(raw, np.uint8).reshape(h, w, 3), axis=1, dtype=np.uint8)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def decode_stored_crop(data: bytes, offset: int, flip: bool, crop: int = 256) -> np.ndarray:
    """`crop_view(decode_stored_image(data), offset, flip, crop)`, bit for bit, decoding only what the
    crop needs where the format allows it (zstd: the undoing of the row deltas stops at the crop's last
    column and skips rows outside it): the training reader's hot path.

    Returns:
        (crop, crop, 3) uint8, C-contiguous.
    """
    if data[:4] != _ZSTD_MAGIC:
        return crop_view(decode_stored_image(data), offset, flip, crop)
    h, w = struct.unpack_from("<II", data, 4)
    delta = np.frombuffer(_zstd().decompress(memoryview(data)[12:], decompressed_size=h * w * 3), np.uint8)
    delta = delta.reshape(h, w, 3)
    rows, cols = (slice(offset, offset + crop), slice(0, crop)) if h > w else (slice(0, crop), slice(0, offset + crop))
    out = np.cumsum(delta[rows, cols], axis=1, dtype=np.uint8)[:, -crop:]  # each row's deltas run from column 0
    if out.shape[:2] != (crop, crop):
        raise ValueError(f"view at offset {offset} of a {h}x{w} image is not a {crop}x{crop} crop")
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


@functools.lru_cache(maxsize=1)
def _zstd():
    import pyarrow as pa  # zstd as Arrow ships it (releases the GIL): no extra dependency
    return pa.Codec("zstd", compression_level=ZSTD_LEVEL)


# --------------------------------------------------------------------------------------------
# Model input / output


def to_model_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1] on `device` (the official ToTensor)."""
    import torch  # here, not at the top: decode / write workers never import torch (~2 s per process)
    if isinstance(images, np.ndarray) and not images.flags.writeable:  # e.g. a crop of a decoded JPEG
        images = images.copy()  # (torch warns on read-only arrays; the copy is a few microseconds)
    x = torch.as_tensor(images).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float -> (B, H, W, 3) uint8: clamped to [0, 1], times 255, rounded."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
