"""The class-conditional MaskGIT generator as a task the shared Ray Train loop (loop.py) drives.

    GeneratorTask   titok_core's generator (BERT-style or U-ViT) on stored token sequences: mask
                    them (arccos schedule), predict the masked tokens given the class (dropped with
                    the recipe's label dropout), cross-entropy with label smoothing, weight 1 masked /
                    `unmasked_weight` unmasked (titok_core.masking). AdamW, clipping, cosine schedule
                    and EMA as every task (optim.py, titok_core.ema). Grids: the tokenizer's decoding
                    of a training sample (left) next to a sample generated for its class (right).

No tokenizer runs while training: batches are token ids. The tokenizer is loaded (rank 0 only) for
the grids, and only when the run was given one.

Legend: B micro-batch, N tokens per image, K codebook size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from titok_core import TiTokReleased, build_generator, generate, get_sampling_preset, mask_tokens, masked_token_loss

from ..preprocess import to_uint8
from ..runtime import load_model_uri
from ..schema import DatasetMetadata
from .optim import TrainedModel, autocast, no_sync
from .recipes import GeneratorRecipe
from .token_data import TokenSampler


class GeneratorTask(TrainedModel):
    """Masked-token training of a generator. `metrics` are per-step scalars averaged over a log window
    and workers (`accuracy`: masked positions predicted right)."""

    metrics = ["loss", "accuracy", "lr", "grad_norm", "images_per_s"]

    def __init__(self, recipe: GeneratorRecipe, device: torch.device, tokenizer_uri: str | None = None):
        self.recipe, self.device, self.tokenizer_uri = recipe, device, tokenizer_uri
        self.config = recipe.generator_config()
        torch.manual_seed(recipe.seed)  # identical init on every worker (DDP also broadcasts rank 0's)
        model = build_generator(self.config).to(device).train()
        # Masks, label dropout and dropout draw from torch's global RNG (saved per rank in checkpoints);
        # each worker gets its own stream, or all would mask their different samples alike.
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.manual_seed(recipe.seed * 1000 + 1 + rank)
        self.setup_training(model, device, recipe.optimizer, recipe.max_steps, recipe.mixed_precision,
                            recipe.ema_decay)
        self._tokenizer: TiTokReleased | None = None

    def batch_sampler(self, metadata: DatasetMetadata) -> TokenSampler:
        """One stored view's tokens per sample and epoch, and the labels."""
        return TokenSampler(self.recipe.seed, self.config.codebook_size, self.config.num_classes)

    def train_step(self, batches: list[dict[str, np.ndarray]], step: int) -> dict[str, Tensor]:
        r, n = self.recipe, len(batches)
        sums: dict[str, Tensor] = {}
        for i, batch in enumerate(batches):
            tokens = torch.from_numpy(batch["tokens"]).to(self.device, non_blocking=True)  # (B, N)
            labels = torch.from_numpy(batch["labels"]).to(self.device, non_blocking=True)  # (B,)
            masked, mask = mask_tokens(tokens, self.config.mask_token_id)
            with no_sync(self.ddp, i == n - 1):
                with autocast(self.device, r.mixed_precision):
                    logits = self.ddp(masked, labels, cond_drop_prob=r.label_dropout)  # (B, N, K)
                # the loss runs in float32 (masked_token_loss casts), as the official MLMLoss does
                loss, accuracy = masked_token_loss(logits, tokens, mask, label_smoothing=r.label_smoothing,
                                                   unmasked_weight=r.unmasked_weight)
                self.optim.backward(loss / n)
            for k, v in (("loss", loss), ("accuracy", accuracy)):
                sums[k] = sums.get(k, 0.0) + v.detach().float() / n
        sums["grad_norm"] = self.optimizer_step()
        return sums

    def log_metrics(self) -> dict[str, float]:
        return {"lr": self.optim.lr}

    @torch.no_grad()
    def grid(self, batch: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The tokenizer's decoding of the first `n` training samples (left) and, for the same classes,
        samples of the (EMA) generator with the recipe's sampling settings and a fixed seed (right),
        so that from grid to grid only the training changes. None without a tokenizer."""
        if self.tokenizer_uri is None:
            return None
        if self._tokenizer is None:
            loaded = load_model_uri(self.tokenizer_uri, option="--tokenizer", what="tokenizer weights",
                                    kinds=(TiTokReleased,)).model
            self._tokenizer = loaded.to(self.device).eval().requires_grad_(False)
        tokens = torch.from_numpy(batch["tokens"][:n]).to(self.device)
        labels = torch.from_numpy(batch["labels"][:n]).to(self.device)
        rng = torch.Generator(self.device).manual_seed(self.recipe.seed)
        sampled = generate(self.export_model(), labels, get_sampling_preset(self.recipe.sampling), generator=rng)
        real = self._tokenizer.decode_tokens(tokens, clamp=True)
        fake = self._tokenizer.decode_tokens(sampled, clamp=True)
        return to_uint8(real), to_uint8(fake)
