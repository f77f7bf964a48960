"""The driver side of jobs/train_generator.py: resolve and check a generator run before any worker
starts; `job.run` then trains it on the same machinery as the tokenizer (Ray Train, the shared loop,
checkpoints, resume by rerun, worker-failure restarts, metrics, the output's lease).

    resolve_generator_run(...)   recipe + overrides, the token dataset's files, metadata and value
                                 ranges against the generator config, the grid tokenizer against the
                                 dataset's: every user mistake becomes one `ConfigError` line
"""

from __future__ import annotations

from typing import Any

from ..runtime import model_identity
from ..storage import check_output
from .config import ConfigError, GeneratorJobConfig
from .data import DatasetError
from .job import _absolute, _load
from .recipes import get_generator_recipe
from .token_data import check_token_layout, inspect_token_dataset


def resolve_generator_run(*, preset: str, data: str, output: str, steps: int | None = None,
                          batch_size: int | None = None, tokenizer: str | None = None,
                          **resources: Any) -> GeneratorJobConfig:
    """Resolve and check a generator run; raises ConfigError (one line) for anything a user got wrong.

    Args:
        tokenizer: the dataset's tokenizer, in its released form (it decodes the sample grids); it must
            be the tokenizer that made `data` (same weights). None: no grids.
        resources: the remaining `GeneratorJobConfig` fields (workers, GPUs, storage options ...).
    """
    from titok_core import TiTokReleased

    storage_options = resources.get("storage_options")
    try:
        check_output(output, storage_options=storage_options)
        recipe = get_generator_recipe(preset).with_overrides(max_steps=steps, batch_size=batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model = recipe.generator_config()
    # Ray Train workers run in their own working directory: every local path must be absolute.
    data, output, tokenizer = _absolute(data), _absolute(output), _absolute(tokenizer)
    try:
        info = inspect_token_dataset(data, storage_options)
        check_token_layout(info, codebook_size=model.codebook_size, num_latent_tokens=model.num_latent_tokens,
                           num_classes=model.num_classes, preset=preset)
    except DatasetError as e:
        raise ConfigError(str(e)) from None
    if tokenizer is not None:
        path, loaded = _load(tokenizer, "--tokenizer", "tokenizer weights", (TiTokReleased,))
        want = info.metadata.model.weights_sha256
        if model_identity(path, loaded)["weights_sha256"] != want:
            raise ConfigError(f"--tokenizer {tokenizer} is not the tokenizer that made --data {data} (weights sha256 "
                              f"differs from {want[:12]}...); pass that tokenizer (the dataset records "
                              f"{info.metadata.model.source})")
    try:
        return GeneratorJobConfig(recipe=recipe, data=data, output=output, dataset=info, tokenizer=tokenizer,
                                  **resources)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
