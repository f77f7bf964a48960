"""The rows between the stages of the shard jobs (pipelines.schema.ShardRow): Arrow batches whose
large values (decoded images, stored images, codes) pass from stage to stage without copies; and
the model actor that commits each shard beside the next one's forward pass."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import ray

from pipelines import schema as S
from pipelines.encode.decode import DecodeOptions, decode_shard, decode_shards
from pipelines.encode.job import CALLS_PER_GPU_ACTOR, ModelThenCommit, Stage, model_then_commit
from pipelines.quarantine import SampleErrorRecord
from pipelines.shards import collect_images, pack


@pytest.fixture(scope="module")
def real_shard(imagenet_sample_dir, tmp_path_factory) -> str:
    """A tar shard of 6 real ImageNet JPEGs, packed by the project's shard writer."""
    images = sorted(collect_images(str(imagenet_sample_dir), labels=str(imagenet_sample_dir / "labels.tsv")),
                    key=lambda im: im.key)[:6]
    out = tmp_path_factory.mktemp("rows") / "shards"
    (name,) = pack(images, str(out), 6)
    return str(out / name)


def data_address(table: pa.Table, column: str) -> int:
    """Where the binary values of a list-of-blobs column live."""
    return table.column(column).chunk(0).values.buffers()[2].address


def test_decoded_images_arrive_equal_and_uncopied(real_shard):
    decoded = decode_shard(real_shard, "s", DecodeOptions(image_format="zstd"))
    assert len(decoded) == 6
    table = decode_shards(pa.table({"shard": [real_shard], "name": ["s"]}), DecodeOptions(image_format="zstd"))
    (back,) = S.DecodedShard.from_table(table)
    assert back.keys == decoded.keys and back.labels == decoded.labels and back.members == decoded.members
    for i in range(6):
        assert np.array_equal(back.base_image(i), decoded.base_image(i))
        assert bytes(back.images[i]) == decoded.images[i]
        # a view of the batch's one buffer, not a copy
        view = back.base_image(i)
        start = data_address(table, "pixels")
        assert start <= view.ctypes.data < start + table.column("pixels").chunk(0).values.buffers()[2].size
        assert not view.flags.writeable


def test_stored_images_pass_the_model_stage_without_a_copy(real_shard):
    table = decode_shards(pa.table({"shard": [real_shard], "name": ["s"]}), DecodeOptions(image_format="png"))
    (decoded,) = S.DecodedShard.from_table(table)
    codes = np.arange(6 * 2 * 4, dtype=np.uint16).reshape(6, 2, 4) * 300
    encoded = S.EncodedShard.from_decoded(decoded, codes, np.full((6, 2), 7, np.int32), [False, True], {"n": 1.5})
    out = S.EncodedShard.to_table([encoded])
    assert data_address(out, "images") == data_address(table, "images")
    (back,) = S.EncodedShard.from_table(out)
    assert np.array_equal(back.codes, codes) and back.codes.dtype == np.uint16
    assert back.view_offsets.tolist() == [[7, 7]] * 6 and back.view_flips == [False, True]
    assert back.stats == {"n": 1.5} and back.heights == decoded.heights
    assert [bytes(b) for b in back.images] == [bytes(b) for b in decoded.images]


@pytest.mark.parametrize("kind", [S.DecodedShard, S.EncodedShard, S.ShardResult, S.EvaluatedShard, S.SampledChunk])
def test_every_shard_has_the_same_schema_empty_or_full(kind):
    """Ray combines the blocks of different shards: a shard with no samples or no errors must not change
    a column's type (an inferred empty list would be of type null)."""
    full, empty = examples(kind)
    a, b = kind.to_table([full]), kind.to_table([empty])
    assert a.schema == b.schema
    both = pa.concat_tables([a, b, a]).slice(1)  # several rows, chunked and sliced, as a batch may come
    rows = kind.from_table(both)
    assert len(rows) == 2
    assert kind.to_table(rows).to_pylist() == kind.to_table([empty, full]).to_pylist()


def examples(kind: type) -> tuple[S.ShardRow, S.ShardRow]:
    error = SampleErrorRecord("k9", "a.tar", "k9.jpg", "undecodable", "cannot identify image file")
    if kind is S.DecodedShard:
        full = S.DecodedShard("a.tar", "a")
        for i in range(3):
            full.add(f"k{i}", i, "a.tar", f"k{i}.jpg", bytes([i]) * (i + 1), np.full((4, 5 + i, 3), i, np.uint8))
        full.errors.append(error)
        return full, S.DecodedShard("b.tar", "b")
    if kind is S.EncodedShard:
        full, empty = examples(S.DecodedShard)
        return (S.EncodedShard.from_decoded(full, np.ones((3, 1, 4), np.uint16), np.zeros((3, 1), np.int32), [False],
                                            {"bf16_agree": 3}),
                S.EncodedShard.from_decoded(empty, np.zeros((0, 1, 4), np.uint16), np.zeros((0, 1), np.int32), [False],
                                            {}))
    if kind is S.ShardResult:
        return S.ShardResult("a.tar", "a", 3, [error], False, 1000, {"x": 1.0}), S.ShardResult("b.tar", "b", 0, [], True)
    if kind is S.EvaluatedShard:
        f = np.array([20.5, 30.0, np.nan])
        return (S.EvaluatedShard("a.tar", "a", ["k0", "k1", "k2"], [1, 2, 3], ["a.tar"] * 3, ["m0", "m1", "m2"],
                                 [error], False, np.ones((3, 8), np.uint16), f, f, f,
                                 {"_stats/a.npz": b"npz", "_grids/a.parquet": b"pq"}, {"s": 2.0}),
                S.EvaluatedShard("b.tar", "b", [], [], [], [], [], True, np.zeros((0, 8), np.uint16),
                                 np.zeros(0), np.zeros(0), np.zeros(0)))
    return (S.SampledChunk(0, "chunk-000000", [5, 5], [0, 1], np.ones((2, 8), np.uint16),
                           np.full((2, 4, 4, 3), 9, np.uint8), {"generate_s": 1.0}, b"stats"),
            S.SampledChunk(1, "chunk-000001", [], [], np.zeros((0, 8), np.uint16), np.zeros((0, 4, 4, 3), np.uint8)))


def test_rows_survive_the_object_store(ray_local, real_shard):
    """What a stage returns is what the next one reads, after Ray's serialisation of the batch."""
    import ray
    table = decode_shards(pa.table({"shard": [real_shard], "name": ["s"]}), DecodeOptions(image_format="jpeg"))
    (back,) = S.DecodedShard.from_table(ray.get(ray.put(table)))
    decoded = decode_shard(real_shard, "s", DecodeOptions(image_format="jpeg"))
    assert all(np.array_equal(back.base_image(i), decoded.base_image(i)) for i in range(len(decoded)))
    assert [bytes(b) for b in back.images] == decoded.images


def test_a_chunks_generated_images_are_wrapped_not_copied():
    """One large array per row (a sampling chunk's images) becomes the Arrow buffer itself."""
    chunk, _ = examples(S.SampledChunk)
    table = S.SampledChunk.to_table([chunk])
    assert table.column("images").chunk(0).buffers()[2].address == chunk.images.ctypes.data
    (back,) = S.SampledChunk.from_table(table)
    assert np.array_equal(back.images, chunk.images) and np.array_equal(back.tokens, chunk.tokens)


class _RecordingModel:
    """A model stage that records how many of its calls run at once."""

    def __init__(self, log: list):
        self.log, self.active = log, 0

    def __call__(self, batch):
        self.active += 1
        self.log.append(("model start", batch, self.active))
        time.sleep(0.05)
        self.log.append(("model end", batch, self.active))
        self.active -= 1
        return batch


def _slow_commit(batch, log: list):
    log.append(("commit start", batch))
    time.sleep(0.3)
    log.append(("commit end", batch))
    return f"committed {batch}"


def test_model_then_commit_runs_the_model_one_call_at_a_time_beside_earlier_commits():
    """The shard jobs' actor with a GPU: its calls run on threads; the model never runs twice at once
    (one model, one GPU), while a shard's commit overlaps the next shard's forward pass."""
    log: list = []
    cls = model_then_commit(Stage(_RecordingModel, {"log": log}))
    assert cls.__name__ == "_RecordingModelThenCommit"  # the name Ray Data shows for the operator
    actor = cls(model=Stage(_RecordingModel, {"log": log}), write=Stage(_slow_commit, {"log": log}))
    with ThreadPoolExecutor(CALLS_PER_GPU_ACTOR) as pool:
        results = list(pool.map(actor, ["a", "b", "c", "d"]))
    assert results == ["committed a", "committed b", "committed c", "committed d"]
    assert {e[2] for e in log if e[0].startswith("model")} == {1}  # never two model calls at once
    events = [e[:2] for e in log]
    assert len(events) == 16
    # while shard "a" was being committed, another shard went through the model
    during_a = events[events.index(("commit start", "a")):events.index(("commit end", "a"))]
    assert any(what == "model end" and shard != "a" for what, shard in during_a), events
    # and the class ships to Ray's workers
    clone = ray.cloudpickle.loads(ray.cloudpickle.dumps(cls))
    assert clone.__name__ == cls.__name__ and issubclass(clone, ModelThenCommit)
