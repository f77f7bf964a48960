"""make_shards: layouts, labels, byte-identical reruns, the CLI, and S3 output."""

import csv
import json
import shutil
import tarfile

import pytest
from corpus import encode, gradient

from jobs.make_shards import main
from pipelines.shards import collect_images, pack
from pipelines.storage import expand_inputs
from pipelines.tar_reader import Sample, iter_samples


def shard_contents(paths) -> dict[str, tuple[bytes, int]]:
    """key -> (image bytes, label) over tar files, read with plain tarfile."""
    members = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                members[m.name] = tar.extractfile(m).read()
    return {name.rsplit(".", 1)[0]: (data, int(members[name.rsplit(".", 1)[0] + ".cls"]))
            for name, data in members.items() if not name.endswith(".cls")}


def test_cli_packs_the_imagenet_sample_with_labels_tsv(imagenet_sample_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    code = main([str(imagenet_sample_dir), "--labels", str(imagenet_sample_dir / "labels.tsv"),
                 "--output", str(out), "--samples-per-shard", "64"])
    assert code == 0
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == [f"train-{i:06d}.tar" for i in range(4)]
    manifest = json.loads((out / "train-manifest.json").read_text())
    assert manifest["shards"] == {f"train-{i:06d}.tar": n for i, n in enumerate([64, 64, 64, 58])}
    assert manifest["num_samples"] == 250 and manifest["config"]["samples_per_shard"] == 64
    assert "train-000003.tar\t58" in capsys.readouterr().out

    with open(imagenet_sample_dir / "labels.tsv", newline="") as f:
        labels = {row["file"]: int(row["class_index"]) for row in csv.DictReader(f, delimiter="\t")}
    contents = shard_contents(shards)
    assert contents == {name.rsplit(".", 1)[0]: ((imagenet_sample_dir / name).read_bytes(), label)
                        for name, label in labels.items()}  # original bytes, labels from labels.tsv
    with tarfile.open(shards[0]) as tar:
        first = tar.getmembers()[:2]
    assert [m.name for m in first] == ["n01440764_tench.jpg", "n01440764_tench.cls"]  # sorted; .JPEG -> .jpg
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in first} == {(0, 0, 0, "", "", 0o644)}


def test_two_runs_are_byte_identical_and_a_seed_shuffles_deterministically(imagenet_sample_dir, tmp_path):
    images = collect_images(str(imagenet_sample_dir), labels=str(imagenet_sample_dir / "labels.tsv"))[:40]
    runs = {}
    for name, seed in [("a", None), ("b", None), ("c", 7), ("d", 7)]:
        pack(images, str(tmp_path / name), 16, shuffle_seed=seed)
        runs[name] = [p.read_bytes() for p in sorted((tmp_path / name).glob("*.tar"))]
    assert len(runs["a"]) == 3 and runs["a"] == runs["b"] and runs["c"] == runs["d"]
    assert runs["a"] != runs["c"]
    with tarfile.open(tmp_path / "c" / "train-000000.tar") as tar:
        shuffled = [m.name for m in tar.getmembers() if m.name.endswith(".cls")]
    assert shuffled != sorted(shuffled) and len(shuffled) == 16


def test_imagefolder_and_list_layouts_keep_real_extensions(tmp_path, imagenet_sample_dir):
    jpeg = (imagenet_sample_dir / "n01514859_hen.JPEG").read_bytes()
    png = encode(gradient(32, 32), "PNG")
    webp = encode(gradient(32, 32), "WEBP")
    root = tmp_path / "folder"
    for path, data in {"cat/a.jpg": jpeg, "cat/b.v2.JPEG": png, "dog/c.webp": webp, "dog/nested/d.jpeg": jpeg,
                       "dog/notes.txt": b"not an image"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    assert main([str(root), "--output", str(tmp_path / "out1")]) == 0
    with tarfile.open(tmp_path / "out1" / "train-000000.tar") as tar:
        names = [m.name for m in tar.getmembers()]
    # a PNG named .JPEG is stored as .png; dots inside a basename would end the WebDataset key early
    assert names == ["cat/a.jpg", "cat/a.cls", "cat/b_v2.png", "cat/b_v2.cls", "dog/c.webp", "dog/c.cls",
                     "dog/nested/d.jpg", "dog/nested/d.cls"]
    assert {k: label for k, (_, label) in shard_contents([tmp_path / "out1" / "train-000000.tar"]).items()} == {
        "cat/a": 0, "cat/b_v2": 0, "dog/c": 1, "dog/nested/d": 1}

    listing = tmp_path / "list.txt"
    listing.write_text(f"# path<TAB>label\nfolder/dog/c.webp\t5\n{root}/cat/a.jpg\t3\n")
    assert main([str(listing), "--output", str(tmp_path / "out2"), "--prefix", "val"]) == 0
    contents = shard_contents([tmp_path / "out2" / "val-000000.tar"])
    assert contents == {"cat/a": (jpeg, 3), "dog/c": (webp, 5)}


def test_flat_directory_with_a_synset_list(tmp_path, imagenet_sample_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ["n01514859_hen.JPEG", "n01440764_tench.JPEG"]:
        shutil.copy(imagenet_sample_dir / name, flat / name)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01514859 hen\n")
    assert main([str(flat), "--synset-list", str(synsets), "--output", str(tmp_path / "out")]) == 0
    labels = {k: label for k, (_, label) in shard_contents(sorted((tmp_path / "out").glob("*.tar"))).items()}
    assert labels == {"n01440764_tench": 0, "n01514859_hen": 2}


def test_user_errors_are_one_line_with_the_fix(tmp_path, imagenet_sample_dir, capsys):
    out = str(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(imagenet_sample_dir), "--output", out], "pass --labels FILE.tsv or --synset-list"),
        ([str(tmp_path / "nope"), "--output", out], "neither a directory nor a list file"),
        ([str(imagenet_sample_dir), "--labels", "x", "--synset-list", "y", "--output", out],
         "either --labels or --synset-list"),
        ([str(imagenet_sample_dir), "--output", out, "--samples-per-shard", "0"],
         "argument --samples-per-shard: 0 is not a positive integer"),
        ([str(tmp_path / "empty"), "--output", out], "no .jpg/.jpeg/.png/.webp images found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_rerun_needs_overwrite_which_removes_stale_shards(tmp_path, imagenet_sample_dir, capsys):
    args = [str(imagenet_sample_dir), "--labels", str(imagenet_sample_dir / "labels.tsv"), "--output", str(tmp_path)]
    assert main(args + ["--samples-per-shard", "100"]) == 0
    assert main(args + ["--samples-per-shard", "200"]) == 2
    assert "already holds 3 shard(s) named train-*.tar; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--samples-per-shard", "200", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]


@pytest.mark.slow
def test_shards_written_to_s3_are_read_back_by_the_reader(imagenet_sample_dir, s3_env):
    bucket = s3_env.create_bucket()
    code = main([str(imagenet_sample_dir), "--labels", str(imagenet_sample_dir / "labels.tsv"),
                 "--output", f"s3://{bucket}/imagenet-sample", "--samples-per-shard", "100"])
    assert code == 0
    shards = expand_inputs(f"s3://{bucket}/imagenet-sample/train-{{000000..000002}}.tar")
    samples = [s for url in shards for s in iter_samples(url, num_classes=1000)]
    assert len(samples) == 250 and all(isinstance(s, Sample) for s in samples)
    assert samples[0].image == (imagenet_sample_dir / "n01440764_tench.JPEG").read_bytes()
    keys = s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(k["Key"] for k in keys) == [f"imagenet-sample/train-{i:06d}.tar" for i in range(3)] + [
        "imagenet-sample/train-manifest.json"]
