"""Model stage of the sampling job: a chunk of (class, index) pairs -> generated tokens -> images
(one generator and one tokenizer per actor).

    tokens  titok_core.generate with the run's sampling settings, batch after batch, every draw from
            the chunk's own torch.Generator (seeded by plan.chunk_seed)
    images  the tokenizer's decode_tokens(clamp=True), then (x * 255).to(uint8): truncation, not
            rounding, as the official evaluation script converts them (sample_imagenet_titok.py)
    stats   with --reference-stats: the feature network's features and logits of those uint8
            images (pipelines.sample.metrics), committed with the chunk

Precision: `auto` is the official setting (fp32, TF32 matmuls allowed on GPU), `fp32` turns TF32 off,
`bf16` samples and decodes under bf16 autocast (faster, not the paper's numbers).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from titok_core import BertGenerator, SamplingConfig, TiTokReleased, UViTGenerator, generate

from .. import schema as S
from ..evaluate.features import FeatureSpec, build_feature_net
from ..runtime import load_model_uri, pick_device
from .metrics import measure, stats_bytes
from .plan import Chunk, chunk_seed

SAMPLING_PRECISIONS = ("auto", "fp32", "bf16")


def to_uint8_truncated(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 by truncation, `(x * 255).to(uint8)`, as the
    official evaluation does (the reconstruction metrics round instead)."""
    return (images.float().clamp(0, 1) * 255.0).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


class SampleChunks:
    """Ray Data callable class: plan rows {index, classes, per_class} -> `SampledChunk` rows.

    Args:
        generator / tokenizer: model URIs (fetched once per node into the cache).
        sampling: `SamplingConfig.to_dict()`.
        seed: the run's seed (each chunk's generator is seeded by plan.chunk_seed(seed, index)).
        batch_size: images per `generate` call.
        precision: auto | fp32 | bf16.
        threads: torch intra-op threads (None: torch's default).
        features: the gFID / IS feature network (None: measure nothing); it sees the uint8 images
            the PNGs hold.
    """

    def __init__(self, generator: str, tokenizer: str, sampling: dict[str, Any], seed: int, batch_size: int,
                 precision: str = "auto", threads: int | None = None, features: FeatureSpec | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = precision == "auto"
            torch.backends.cudnn.allow_tf32 = precision == "auto"
        self.generator = load_model_uri(generator, option="--generator", what="generator weights",
                                        kinds=(BertGenerator, UViTGenerator)).model.to(self.device).eval()
        self.tokenizer = load_model_uri(tokenizer, option="--tokenizer", what="tokenizer weights",
                                        kinds=(TiTokReleased,)).model.to(self.device).eval()
        self.sampling = SamplingConfig(**sampling)
        self.seed, self.batch_size, self.bf16 = seed, batch_size, precision == "bf16"
        self.features = features
        self.feature_net = build_feature_net(features, self.device) if features is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data stage: plan rows {index, classes, per_class} -> `SampledChunk` rows."""
        return S.SampledChunk.to_table([self.sample(Chunk(int(r["index"]), tuple(int(c) for c in r["classes"]),
                                                           int(r["per_class"]))) for r in batch.to_pylist()])

    def sample(self, chunk: Chunk) -> S.SampledChunk:
        rng = torch.Generator(self.device).manual_seed(chunk_seed(self.seed, chunk.index))
        labels = torch.from_numpy(chunk.labels).to(self.device)
        tokens, images, feats, logits = [], [], [], []
        generate_s = decode_s = measure_s = 0.0
        for start in range(0, len(chunk), self.batch_size):
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                t0 = time.perf_counter()
                ids = generate(self.generator, labels[start:start + self.batch_size], self.sampling, generator=rng)
                self._sync()
                t1 = time.perf_counter()
                decoded = self.tokenizer.decode_tokens(ids, clamp=True)
                images.append(to_uint8_truncated(decoded))
                t2 = time.perf_counter()
            tokens.append(ids.cpu().numpy().astype(np.uint16))
            generate_s += t1 - t0
            decode_s += t2 - t1
            if self.feature_net is not None:  # outside autocast: the features are float64
                f, g = measure(self.feature_net, images[-1], self.device, self.batch_size)
                feats.append(f)
                logits.append(g)
                measure_s += time.perf_counter() - t2
        stats_file = stats_bytes(np.concatenate(feats), np.concatenate(logits), self.features) if feats else b""
        return S.SampledChunk(chunk.index, chunk.name, chunk.labels.tolist(), chunk.indices.tolist(),
                              np.concatenate(tokens), np.concatenate(images),
                              {"generate_s": generate_s, "decode_s": decode_s, "measure_s": measure_s},
                              stats_file)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
