"""Decoding, quarantine reasons, official-pixel equivalence, and the deterministic views."""

import io

import numpy as np
import pytest
import torchvision.transforms.functional as F
from corpus import encode, gradient
from PIL import Image
from torchvision import transforms

from pipelines import quarantine as q
from pipelines.preprocess import View, apply_view, decode_and_preprocess, resize_shorter_side, view_specs


def official_base(data: bytes) -> Image.Image:
    """bytedance/1d-tokenizer: wds ImageHandler("pil") (open, load, convert RGB) + Resize(256, bicubic)."""
    with io.BytesIO(data) as stream:
        image = Image.open(stream)
        image.load()
        image = image.convert("RGB")
    return transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)(image)


def reason_of(data: bytes, **options) -> str | None:
    try:
        decode_and_preprocess(data, **options)
    except q.SampleError as e:
        return e.reason
    return None


def test_every_corpus_image_gets_its_exact_reason_and_the_good_ones_decode(image_corpus):
    got = {name: reason_of(data) for name, (data, _) in image_corpus.items()}
    assert got == {name: expected for name, (_, expected) in image_corpus.items()}
    for name, (data, expected) in image_corpus.items():
        if expected is None:
            out = decode_and_preprocess(data)
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) == 256, name


def test_sample_error_carries_reason_and_one_line_detail(image_corpus):
    with pytest.raises(q.SampleError) as info:
        decode_and_preprocess(image_corpus["bomb_65000x65000"][0])
    assert info.value.reason == q.DECOMPRESSION_BOMB and "\n" not in info.value.detail
    record = info.value.to_record("k", "s.tar", "k.jpg")
    assert (record.key, record.shard, record.member, record.reason) == ("k", "s.tar", "k.jpg", q.DECOMPRESSION_BOMB)


def test_pixels_match_the_official_eval_transform_on_real_jpegs(imagenet_sample_dir):
    paths = sorted(imagenet_sample_dir.glob("*.JPEG"))[::10]
    gray = [p for p in sorted(imagenet_sample_dir.glob("*.JPEG")) if Image.open(p).mode == "L"][:2]
    for path in paths + gray:
        data = path.read_bytes()
        official = official_base(data)
        ours = decode_and_preprocess(data)
        np.testing.assert_array_equal(ours, np.asarray(official), err_msg=path.name)
        np.testing.assert_array_equal(apply_view(ours, View(0.5, False)), np.asarray(F.center_crop(official, 256)))


def test_long_side_is_truncated_like_torchvision():
    # 256 * 303 / 200 = 387.84 -> 387 (int), not 388
    assert decode_and_preprocess(encode(gradient(303, 200), "PNG")).shape == (256, 387, 3)


def test_exif_orientation_is_applied(image_corpus):
    out = decode_and_preprocess(image_corpus["exif_rotated_jpeg"][0])
    assert out.shape == (512, 256, 3)  # stored 40x20 landscape, displayed 20x40 portrait
    top, bottom = out[100, 128].astype(int), out[400, 128].astype(int)
    assert top[0] > 200 and top[2] < 50  # red half rotated to the top
    assert bottom[2] > 200 and bottom[0] < 50


def test_grayscale_and_cmyk_convert_exactly_as_the_official_reader(image_corpus):
    gray = decode_and_preprocess(image_corpus["grayscale_jpeg"][0])
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    for name in ("grayscale_jpeg", "cmyk_jpeg"):
        data = image_corpus[name][0]
        np.testing.assert_array_equal(decode_and_preprocess(data), np.asarray(official_base(data)), err_msg=name)


def test_transparency_is_composited_on_white(image_corpus):
    # resolution = the short side: torchvision returns the image unresampled, pixels stay exact
    palette = decode_and_preprocess(image_corpus["palette_png_transparent"][0], resolution=2)
    white, green = [255, 255, 255], [0, 255, 0]
    assert palette.tolist() == [[white, green, white, green], [green, green, white, white]]
    rgba = decode_and_preprocess(image_corpus["rgba_png"][0], resolution=1)
    assert rgba.tolist() == [[white, [0, 0, 255]]]  # the official convert("RGB") gives black


def test_16_bit_grayscale_is_scaled_not_clipped(image_corpus):
    out = decode_and_preprocess(image_corpus["png16"][0], resolution=1)
    assert out[0, :, 0].tolist() == [0, 4, 128, 255]  # convert("RGB") would give [0, 255, 255, 255]


def test_size_limits_are_options(imagenet_sample_dir):
    data = (imagenet_sample_dir / "n01514859_hen.JPEG").read_bytes()  # 500x333
    assert reason_of(data, max_pixels=500 * 333 - 1) == q.TOO_LARGE
    assert reason_of(data, max_aspect_ratio=1.4) == q.EXTREME_ASPECT_RATIO
    assert reason_of(data, max_pixels=500 * 333, max_aspect_ratio=1.6) is None


def test_view_sets():
    assert view_specs("center") == [View(0.5, False)]
    assert view_specs("center-flip") == [View(0.5, False), View(0.5, True)]
    assert view_specs("offsets-1") == view_specs("center-flip")
    assert view_specs("offsets-4") == [View(f, flip) for f in (1 / 8, 3 / 8, 5 / 8, 7 / 8) for flip in (False, True)]
    for bad in ("centre", "offsets-0", "offsets-x", "offsets-"):
        with pytest.raises(ValueError, match="unknown view set"):
            view_specs(bad)


@pytest.mark.parametrize("size", [(259, 256), (261, 256), (260, 256), (256, 263)])
def test_center_view_is_torchvision_center_crop(size):
    # odd free ranges round half to even in torchvision (1.5 -> 2, 2.5 -> 2): the view must agree
    image = gradient(*size)
    ours = apply_view(np.asarray(image), View(0.5, False))
    np.testing.assert_array_equal(ours, np.asarray(F.center_crop(image, 256)))


def test_offset_views_are_official_random_crops_spread_over_the_long_side():
    wide = gradient(400, 256)
    expected_lefts = [18, 54, 90, 126]  # (2k + 1) / 8 * (400 - 256)
    views = view_specs("offsets-4")
    for view, left in zip(views, [x for x in expected_lefts for _ in (0, 1)]):
        official = F.crop(wide, 0, left, 256, 256)  # what RandomCrop(256) returns for offset `left`
        if view.flip:
            official = F.hflip(official)
        out = apply_view(np.asarray(wide), view)
        assert out.shape == (256, 256, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, np.asarray(official))
    tall = gradient(256, 400)
    np.testing.assert_array_equal(apply_view(np.asarray(tall), View(0.0, False)), np.asarray(tall)[:256])
    np.testing.assert_array_equal(apply_view(np.asarray(tall), View(1.0, False)), np.asarray(tall)[144:])


def test_view_rejects_an_image_smaller_than_the_crop():
    with pytest.raises(ValueError, match="shorter than the crop 256"):
        apply_view(np.zeros((200, 300, 3), np.uint8), View(0.5, False))


@pytest.mark.parametrize("image_format", ["zstd", "png", "jpeg"])
def test_stored_base_images_read_back_as_what_the_model_saw(image_format, imagenet_sample_dir):
    """Each stored format gives back the pixels the job encoded (zstd and PNG: the base image itself),
    and the training reader's crop of the stored bytes is the crop of those pixels, for every view."""
    from pipelines.preprocess import (
        crop_view,
        decode_stored_crop,
        decode_stored_image,
        encode_stored_image,
        view_offset,
    )
    paths = sorted(imagenet_sample_dir.glob("*.JPEG"))[:24]
    shapes = set()
    for path in paths:
        base = decode_and_preprocess(path.read_bytes())
        shapes.add("portrait" if base.shape[0] > base.shape[1] else "landscape" if base.shape[1] > base.shape[0]
                   else "square")
        data, seen = encode_stored_image(base, image_format)
        np.testing.assert_array_equal(decode_stored_image(data), seen)
        if image_format != "jpeg":
            np.testing.assert_array_equal(seen, base)
        for view in view_specs("offsets-4"):
            offset = view_offset(*base.shape[:2], view)
            np.testing.assert_array_equal(decode_stored_crop(data, offset, view.flip),
                                          crop_view(seen, offset, view.flip))
    assert {"portrait", "landscape"} <= shapes
    if image_format == "zstd":  # about PNG's size: lossless
        png = np.mean([len(encode_stored_image(decode_and_preprocess(p.read_bytes()), "png")[0]) for p in paths[:4]])
        zst = np.mean([len(encode_stored_image(decode_and_preprocess(p.read_bytes()), "zstd")[0]) for p in paths[:4]])
        assert zst < 1.15 * png


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (256, 256), (256, 999), (1001, 256), (333, 500),
                                  (100, 150), (257, 2560), (640, 427)])
def test_the_resize_is_torchvisions_for_every_shape(size):
    """The official Resize(256, bicubic) on PIL, done without torchvision: same size rule (long side
    truncated), same pixels, the image itself when nothing changes (upscaling and exact sizes too)."""
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    official = transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)(image)
    ours = resize_shorter_side(image, 256)
    assert ours.size == official.size and min(ours.size) == 256
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(official))
