"""Why a sample was dropped: the fixed set of reasons, the exception and the record.

Every stage that drops a sample says why with one of the short reason strings below, so a
pipeline can count drops per reason and write each one to a quarantine table. The strings are
part of the output format: add new ones, never rename old ones.
"""

from __future__ import annotations

from dataclasses import dataclass

# Image bytes (pipelines.preprocess.decode_and_preprocess).
EMPTY = "empty"  # zero-byte image member
UNDECODABLE = "undecodable"  # not an image Pillow can read, or corrupt image data
TRUNCATED = "truncated"  # image data ends early (cut JPEG / PNG, header only)
DECOMPRESSION_BOMB = "decompression_bomb"  # Pillow's own guard (Image.MAX_IMAGE_PIXELS) refused it
TOO_LARGE = "too_large"  # width * height above max_pixels, checked from the header before decoding
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"  # long side / short side above max_aspect_ratio
UNSUPPORTED_FORMAT = "unsupported_format"  # a real image, but not JPEG / PNG / WebP (GIF, BMP, TIFF ...)

# Tar structure (pipelines.tar_reader.iter_samples).
MISSING_IMAGE = "missing_image"  # a key with no jpg/jpeg/png/webp member
MISSING_LABEL = "missing_label"  # a key with no cls member
BAD_LABEL = "bad_label"  # cls member is not an ASCII integer
LABEL_OUT_OF_RANGE = "label_out_of_range"  # label < 0 or >= num_classes
DUPLICATE_KEY = "duplicate_key"  # key seen before in the shard, or two members for one slot
JUNK_MEMBER = "junk_member"  # member no reader could use: no extension, an unknown one, not a regular file (drops only the member)
DOT_IN_NAME = "dot_in_name"  # `a.v2.jpg`: WebDataset ends the key at the first dot, so this is key `a`, extension `v2.jpg`
TRUNCATED_TAR = "truncated_tar"  # the shard ends in the middle of a header or a member
CORRUPT_TAR = "corrupt_tar"  # not a tar, or a damaged header part-way through
UNREADABLE_SHARD = "unreadable_shard"  # the shard could not be opened or read (missing, I/O error)

IMAGE_REASONS = frozenset({
    EMPTY, UNDECODABLE, TRUNCATED, DECOMPRESSION_BOMB, TOO_LARGE, EXTREME_ASPECT_RATIO, UNSUPPORTED_FORMAT,
})
TAR_REASONS = frozenset({
    MISSING_IMAGE, MISSING_LABEL, BAD_LABEL, LABEL_OUT_OF_RANGE, DUPLICATE_KEY, JUNK_MEMBER, DOT_IN_NAME,
    TRUNCATED_TAR, CORRUPT_TAR, UNREADABLE_SHARD,
})
REASONS = IMAGE_REASONS | TAR_REASONS


@dataclass(frozen=True)
class SampleErrorRecord:
    """One quarantined sample (or member): where it was and why it was dropped.

    Args:
        key: the WebDataset sample key ("" when the problem is not tied to a key).
        shard: URL of the shard the sample came from, as given to the reader.
        member: tar member name the problem was found in ("" when there is none, e.g. missing_image).
        reason: one of `REASONS`.
        detail: one human-readable line (exception text, the bad value).
    """

    key: str
    shard: str
    member: str
    reason: str
    detail: str


class SampleError(Exception):
    """A sample that cannot be used; `reason` is one of `REASONS`, `detail` one line for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, f"unknown quarantine reason {reason!r}"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def to_record(self, key: str, shard: str, member: str) -> SampleErrorRecord:
        """The quarantine record for this error at `shard` / `member`."""
        return SampleErrorRecord(key=key, shard=shard, member=member, reason=self.reason, detail=self.detail)


def one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception on one line, at most `limit` characters, for `detail`."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:limit]
