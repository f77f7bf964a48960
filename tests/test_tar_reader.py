"""Reading shards: samples, every quarantine reason, truncated and damaged tars, S3."""

import io
import tarfile

import pytest
from corpus import encode, gradient

from pipelines import quarantine as q
from pipelines.preprocess import decode_and_preprocess
from pipelines.shards import write_shards
from pipelines.tar_reader import Sample, iter_samples

JPEG = encode(gradient(32, 32), "JPEG")


def raw_tar(path, members: list[tuple[str, bytes | None]]) -> str:
    """A tar with exactly these members; data None makes a directory entry."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def summary(items) -> list[tuple[str, str]]:
    """(key, "sample" or the reason) per item, in order."""
    return [(i.key, "sample" if isinstance(i, Sample) else i.reason) for i in items]


def test_good_shard_yields_samples_with_original_bytes(tmp_path):
    samples = [(f"s{i}", JPEG + bytes([i]), "jpg", i) for i in range(5)]
    (url,) = write_shards(samples, str(tmp_path), 10)
    out = list(iter_samples(url, num_classes=1000))
    assert [(s.key, s.image, s.ext, s.label, s.shard, s.member) for s in out] == [
        (k, d, "jpg", label, url, f"{k}.jpg") for k, d, _, label in samples]


def test_every_structural_defect_has_its_reason(tmp_path):
    shard = raw_tar(tmp_path / "bad.tar", [
        ("ok.jpg", JPEG), ("ok.cls", b"7"),
        ("nolabel.jpg", JPEG),
        ("noimage.cls", b"3"),
        ("badlabel.jpg", JPEG), ("badlabel.cls", b"seven"),
        ("big.jpg", JPEG), ("big.cls", b"1000"),
        ("neg.png", JPEG), ("neg.cls", b"-1"),
        ("twice.jpg", JPEG), ("twice.cls", b"1"),
        ("other.jpg", JPEG), ("other.cls", b"2"),
        ("twice.jpg", JPEG), ("twice.cls", b"1"),  # key reused later in the shard
        ("dupext.jpg", JPEG), ("dupext.jpg", JPEG), ("dupext.cls", b"1"),
        ("twoimg.jpg", JPEG), ("twoimg.png", JPEG), ("twoimg.cls", b"1"),
        ("extra.jpg", JPEG), ("extra.xyz", b"hello"), ("extra.cls", b" 5\n"),
        ("adir", None),
        ("README", b"no extension"),
        ("sub/Deep.JPEG", JPEG), ("sub/Deep.cls", b"4"),
    ])
    out = list(iter_samples(shard, num_classes=1000))
    assert summary(out) == [
        ("ok", "sample"),
        ("nolabel", q.MISSING_LABEL),
        ("noimage", q.MISSING_IMAGE),
        ("badlabel", q.BAD_LABEL),
        ("big", q.LABEL_OUT_OF_RANGE),
        ("neg", q.LABEL_OUT_OF_RANGE),
        ("twice", "sample"),
        ("other", "sample"),
        ("twice", q.DUPLICATE_KEY),
        ("dupext", q.DUPLICATE_KEY),
        ("twoimg", q.DUPLICATE_KEY),
        ("extra", q.JUNK_MEMBER),  # only the .xyz member is dropped ...
        ("", q.JUNK_MEMBER),  # directory (members without a key do not end a sample)
        ("", q.JUNK_MEMBER),  # no extension
        ("extra", "sample"),  # ... the sample survives
        ("sub/Deep", "sample"),
    ]
    samples = {s.key: s for s in out if isinstance(s, Sample)}
    assert (samples["extra"].label, samples["sub/Deep"].ext, samples["sub/Deep"].label) == (5, "jpeg", 4)
    junk = [r for r in out if not isinstance(r, Sample) and r.reason == q.JUNK_MEMBER]
    assert [r.member for r in junk] == ["extra.xyz", "adir", "README"]
    assert all("\n" not in r.detail for r in out if not isinstance(r, Sample))
    ignoring_xyz = summary(iter_samples(shard, ignore_extensions={"xyz"}))
    assert ("extra", "sample") in ignoring_xyz and ("extra", q.JUNK_MEMBER) not in ignoring_xyz


def test_an_img2dataset_shard_reads_without_errors(tmp_path):
    """img2dataset writes <key>.jpg, <key>.txt (caption) and <key>.json (metadata) for every sample."""
    members = []
    for i in range(4):
        key = f"{i:09d}"
        members += [(f"{key}.jpg", JPEG), (f"{key}.txt", b"a photo of a hen"),
                    (f"{key}.json", b'{"url": "http://example.com/x.jpg", "width": 32, "status": "success"}'),
                    (f"{key}.cls", str(i).encode())]
    members += [("000000009.json", b"{}"), ("000000009.txt", b"its image failed to download")]
    out = list(iter_samples(raw_tar(tmp_path / "00000.tar", members), num_classes=1000))
    assert summary(out) == [(f"{i:09d}", "sample") for i in range(4)] + [("000000009", q.MISSING_IMAGE)]
    assert [s.label for s in out[:4]] == [0, 1, 2, 3]
    assert out[-1].member == "000000009.json" and "000000009.txt" in out[-1].detail


def test_adjacent_samples_with_one_key_keep_the_first(tmp_path):
    shard = raw_tar(tmp_path / "dup.tar", [
        ("a.jpg", JPEG), ("a.cls", b"1"), ("a.jpg", JPEG + b"2"), ("a.cls", b"2"), ("b.jpg", JPEG), ("b.cls", b"3")])
    out = list(iter_samples(shard, num_classes=1000))
    assert summary(out) == [("a", "sample"), ("a", q.DUPLICATE_KEY), ("b", "sample")]
    assert out[0].label == 1 and out[0].image == JPEG  # the first copy is the one kept


def test_a_dot_in_a_file_name_is_explained_member_by_member(tmp_path):
    shard = raw_tar(tmp_path / "dots.tar", [
        ("n01440764_tench.v2.jpg", JPEG), ("n01440764_tench.v2.cls", b"0"), ("ok.jpg", JPEG), ("ok.cls", b"1")])
    out = list(iter_samples(shard, num_classes=1000))
    assert summary(out) == [("n01440764_tench", q.DOT_IN_NAME)] * 2 + [("ok", "sample")]
    assert [r.member for r in out[:2]] == ["n01440764_tench.v2.jpg", "n01440764_tench.v2.cls"]
    assert "first dot" in out[0].detail and "rename" in out[0].detail and "\n" not in out[0].detail


def test_image_and_tar_defects_end_to_end(tmp_path, image_corpus):
    """A shard of the whole bad-input corpus plus tar-level junk: read it, decode what survives."""
    samples = [(name, data, "jpg", 1) for name, (data, _) in image_corpus.items()]
    samples += [("nolabel", JPEG, "jpg", None), ("outofrange", JPEG, "jpg", 5000),
                ("real_jpeg", JPEG, "jpg", 1), ("junk", b"x", "xyz", None)]
    (url,) = write_shards(samples, str(tmp_path), 100)
    outcomes = []
    for item in iter_samples(url, num_classes=1000):
        if isinstance(item, Sample):
            try:
                decode_and_preprocess(item.image)
                outcomes.append((item.key, None))
            except q.SampleError as e:
                outcomes.append((item.key, e.reason))
        else:
            outcomes.append((item.key, item.reason))
    assert outcomes == [(name, reason) for name, (_, reason) in image_corpus.items()] + [
        ("nolabel", q.MISSING_LABEL), ("outofrange", q.LABEL_OUT_OF_RANGE),
        ("real_jpeg", q.DUPLICATE_KEY), ("junk", q.JUNK_MEMBER)]


def test_truncated_tar_keeps_every_complete_sample_before_the_cut(tmp_path):
    samples = [(f"s{i}", JPEG + bytes(range(i * 37 % 200)), "jpg", i) for i in range(6)]
    (url,) = write_shards(samples, str(tmp_path / "full"), 10)
    full = open(url, "rb").read()
    with tarfile.open(url) as tar:  # where each sample's last byte (its .cls data) ends
        ends = {m.name.split(".")[0]: m.offset_data + m.size for m in tar.getmembers() if m.name.endswith(".cls")}
    end_of_members = max(ends.values())
    cuts = sorted(set(range(0, end_of_members + 512, 97)) | set(range(0, end_of_members + 512, 512)))
    for cut in cuts:
        path = tmp_path / f"cut{cut}.tar"
        path.write_bytes(full[:cut])
        out = list(iter_samples(str(path)))
        complete = [k for k, end in ends.items() if end <= cut]
        assert [s.key for s in out if isinstance(s, Sample)] == complete, cut
        assert len(out) == len(complete) + 1 and out[-1].reason == q.TRUNCATED_TAR, cut
        assert str(len(complete)) in out[-1].detail
    assert summary(iter_samples(url)) == [(f"s{i}", "sample") for i in range(6)]


def test_damaged_empty_missing_and_foreign_shards(tmp_path):
    (url,) = write_shards([(f"s{i}", JPEG, "jpg", i) for i in range(4)], str(tmp_path), 10)
    data = bytearray(open(url, "rb").read())
    with tarfile.open(url) as tar:
        third = [m for m in tar.getmembers() if m.name == "s2.jpg"][0].offset
    data[third + 20 : third + 40] = b"x" * 20  # scribble over a header: checksum fails
    (tmp_path / "damaged.tar").write_bytes(bytes(data))
    damaged = summary(iter_samples(str(tmp_path / "damaged.tar")))
    assert damaged == [("s0", "sample"), ("s1", "sample"), ("", q.CORRUPT_TAR)]
    (tmp_path / "empty.tar").write_bytes(b"")
    assert summary(iter_samples(str(tmp_path / "empty.tar"))) == [("", q.TRUNCATED_TAR)]
    (tmp_path / "random.tar").write_bytes(JPEG * 3)
    assert summary(iter_samples(str(tmp_path / "random.tar"))) == [("", q.CORRUPT_TAR)]
    missing = list(iter_samples(str(tmp_path / "nope.tar")))
    assert summary(missing) == [("", q.UNREADABLE_SHARD)] and "nope.tar" in missing[0].detail


@pytest.mark.slow
def test_reads_shards_from_s3_including_a_truncated_one(tmp_path, s3_env):
    bucket = s3_env.create_bucket()
    samples = [(f"s{i}", JPEG, "jpg", i) for i in range(3)]
    (url,) = write_shards(samples, f"s3://{bucket}/shards", 10)
    assert url == f"s3://{bucket}/shards/train-000000.tar"
    assert summary(iter_samples(url)) == [("s0", "sample"), ("s1", "sample"), ("s2", "sample")]
    whole = s3_env.client().get_object(Bucket=bucket, Key="shards/train-000000.tar")["Body"].read()
    s3_env.client().put_object(Bucket=bucket, Key="cut.tar", Body=whole[: len(whole) // 2])
    out = list(iter_samples(f"s3://{bucket}/cut.tar"))
    assert out[-1].reason == q.TRUNCATED_TAR and all(isinstance(s, Sample) for s in out[:-1])
