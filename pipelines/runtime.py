"""What every job does the same way: logging, one-line failures, Ray start-up, the environment its
workers get, which device runs a model, and loading a model (or perceptual-loss weights) named by a URI.

Nothing here knows about a particular job; `pipelines.encode`, `pipelines.train` and the jobs
in `jobs/` all start from these pieces.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from typing import Any, NamedTuple

import torch

from .storage import fetch_to_cache

# Environment variables a job's Ray tasks, actors and training workers inherit from the driver:
# storage credentials and endpoints (AWS_*), this project's settings (TITOK_*, e.g. its cache),
# Hugging Face and torch hub caches (HF_*, TORCH_HOME). A cluster started without them still
# reads the same buckets and caches as the driver.
FORWARDED_ENV_PREFIXES = ("AWS_", "TITOK_", "HF_", "TORCH_HOME")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows defaults and keeps the module docstring's examples as written."""


class UsageError(ValueError):
    """A bad command line: one line naming the argument; the job prints it and exits 2."""


class JobArgumentParser(argparse.ArgumentParser):
    """argparse for the jobs: a bad argument raises `UsageError` (one line naming it, see `fail`)
    instead of printing the usage and exiting, so `main(argv)` returns 2 like for any other input error."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number(kind: type, low: float | None, high: float | None = None, low_open: bool = False, what: str = ""):
    """An argparse `type` accepting `kind` numbers in [low, high] ((low, high] with low_open)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, low_open=True, what="a positive integer")
non_negative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0, low_open=True, what="a positive number")
non_negative_float = _number(float, 0, what="a number >= 0")
fraction = _number(float, 0, 1, what="a fraction in [0, 1]")


def view_set(text: str) -> str:
    """argparse `type` for --views: a known view-set name (checked before anything is loaded)."""
    from .preprocess import view_specs
    try:
        view_specs(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def fail(message: str) -> int:
    """Print one `error: ...` line for the user and return exit code 2 (a usage error)."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def forwarded_env() -> dict[str, str]:
    """The driver's storage / cache settings (FORWARDED_ENV_PREFIXES), for a runtime_env."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def init_ray(address: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS, the cluster of a `ray job submit`), else start a local Ray."""
    import ray
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def pick_device() -> torch.device:
    """The GPU Ray gave this process, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LoadedModel(NamedTuple):
    path: str  # the local file or directory it was loaded from (downloaded into the cache if remote)
    model: torch.nn.Module


def load_model_uri(uri: str, *, option: str, what: str, kinds: tuple[type, ...] | None = None) -> LoadedModel:
    """Fetch `uri` (local path, hf://, http(s)://, s3://, gs://; cached once) and load it with titok_core.

    Args:
        uri: checkpoint: an official `.bin`, our directory (model.safetensors + config.json), a directory
            in the official Hugging Face Hub layout, or a Hub name: `hf://owner/name[@revision]` (a
            repository such as titok_core.HUB_MODELS["L-32"]) or `hf://owner/name[@revision]/file`
            (one file of a repository), resolved through huggingface_hub's cache (storage.fetch_hf).
        option: the command-line option that named it, for messages ("--teacher").
        what: what it is, for messages ("teacher weights").
        kinds: model classes accepted; another kind is a ValueError naming both.

    Raises:
        FileNotFoundError / RuntimeError (not there, download failed) and ValueError (not a model
        of an accepted kind, or a checkpoint that does not fit): one line each.
    """
    from titok_core import load_model
    path = fetch_to_cache(uri, what=what, option=option)
    try:
        model = load_model(path)
    except ValueError as e:  # CheckpointMismatchError and friends
        raise ValueError(f"{option} {uri}: {str(e).splitlines()[0]}") from None
    if kinds and not isinstance(model, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{option} {uri} holds a {type(model).__name__}, not a {names}")
    return LoadedModel(path, model)


def model_identity(uri: str, model: torch.nn.Module) -> dict[str, Any]:
    """What a dataset records about the model that made it: kind, config, a hash of its weights, and
    its source as the user named it (a URL, or an absolute local path), so a later job on another
    machine (training's default --teacher) can fetch it again."""
    from .storage import is_local, local_path
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return {"kind": type(model).__name__, "config": model.config.to_dict(), "weights_sha256": h.hexdigest(),
            "source": local_path(uri) if is_local(uri) else uri}


def vgg16_weights(uri: str | None = None) -> str:
    """Local path of the ImageNet VGG16 weights LPIPS needs: `uri` fetched (path, URL, s3://), else
    torch's hub cache, else downloaded once into our cache. Offline without them: RuntimeError
    naming both ways to provide the file."""
    from titok_core.losses import VGG16_URL, vgg16_hub_file
    if uri is not None:
        return fetch_to_cache(uri, what="LPIPS VGG16 weights", option="--lpips-weights")
    if os.path.isfile(vgg16_hub_file()):
        return vgg16_hub_file()
    try:
        return fetch_to_cache(VGG16_URL, what="LPIPS VGG16 weights", option="--lpips-weights")
    except RuntimeError as e:
        raise RuntimeError(f"LPIPS needs ImageNet VGG16 weights: {vgg16_hub_file()} is missing and the download "
                           f"failed ({str(e).split(' (', 1)[-1].split(';')[0]}); pass --lpips-weights "
                           f"/path/to/vgg16-397923af.pth, or put that file at {vgg16_hub_file()}") from None


def perceptual_loss(kind: str, pretrained: bool = True, lpips_weights: str | None = None,
                    convnext_weights: str | None = None, resize: int | None = None) -> torch.nn.Module:
    """titok_core's frozen perceptual loss by name, with its weights fetched here (paths, URLs, s3://)."""
    from titok_core.losses import build_perceptual_loss
    if pretrained and "lpips" in kind:
        lpips_weights = vgg16_weights(lpips_weights)
    if convnext_weights is not None:
        convnext_weights = fetch_to_cache(convnext_weights, what="ConvNeXt-S weights", option="--convnext-weights")
    return build_perceptual_loss(kind, pretrained, lpips_weights, convnext_weights, resize)


def load_lpips(uri: str | None = None, device: torch.device | str = "cpu", *, required: bool = True):
    """LPIPS-VGG as a metric (`titok_core.losses.PerceptualLoss`, inputs in [0, 1]) on `device`.

    With `required=False` a missing backbone gives None and a warning instead of an error
    (verification then reports PSNR only)."""
    try:
        return perceptual_loss("lpips", lpips_weights=uri).to(device)
    except (RuntimeError, FileNotFoundError) as e:
        if required:
            raise
        logging.getLogger("titok").warning("LPIPS unavailable (%s); reporting PSNR only", str(e).splitlines()[0][:200])
        return None
