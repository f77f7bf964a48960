"""The demo's last step: a class-conditional generator on the demo's tokens, and what its samples show.

    generator_argv, sample_argv   the arguments jobs/demo.py gives jobs/train_generator.py and
                                  jobs/sample_generator.py (the debug generator, the demo's classes)
    samples_grid                  samples.png: per class, a real crop of it | the generator's samples
    generator_section             the report's words on them, and on what offline weights mean for them

Like demo_report.py, everything here only reads what the jobs wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .preprocess import CENTER, apply_view, decode_stored_image

GENERATOR_PRESET = "debug"  # 32 tokens from a codebook of 256: the demo tokenizer's
GENERATOR_STEPS = 200  # the debug recipe's 60 steps leave the samples noise; 200 show the classes' colours (~1 min here)
SAMPLES_PER_CLASS = 4
CLASSES = 8  # rows of samples.png


def demo_classes(out: Path, n: int = CLASSES) -> list[int]:
    """The first n labels of the token dataset (the bundled photos: one label per photo)."""
    labels = pd.read_parquet(out / "tokens", columns=["label"]).label
    return sorted(int(v) for v in labels.unique())[:n]


def generator_argv(out: Path, workers: int, steps: int | None) -> list[str]:
    return ["--preset", GENERATOR_PRESET, "--data", str(out / "tokens"), "--tokenizer", str(out / "stage2" / "model"),
            "--output", str(out / "generator"), "--num-workers", str(workers),
            "--steps", str(steps or GENERATOR_STEPS)]


def sample_argv(out: Path, classes: list[int]) -> list[str]:
    return ["--generator", str(out / "generator" / "model"), "--output", str(out / "samples"),
            "--classes", ",".join(map(str, classes)), "--per-class", str(SAMPLES_PER_CLASS), "--overwrite"]


def samples_grid(out: Path, enlarge) -> Path:
    """One row per class: a real centre crop of that class (left, from the proxy dataset) | its samples,
    enlarged like reconstructions.png."""
    proxy = pd.read_parquet(out / "proxy", columns=["key", "label", "image"]).sort_values("key")
    real = proxy.drop_duplicates("label").set_index("label")
    rows = []
    for folder in sorted(p for p in (out / "samples" / "images").iterdir() if p.is_dir()):
        label = int(folder.name)
        samples = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))])
        crop = apply_view(decode_stored_image(real.loc[label, "image"]), CENTER, samples.shape[1])[None]
        pictures = enlarge(np.concatenate([crop, samples]))
        gap = np.full((pictures.shape[1], 8, 3), 255, np.uint8)  # a white bar between the real crop and the samples
        rows.append(np.concatenate([pictures[0], gap, *pictures[1:]], axis=1))
    path = out / "samples.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def generator_section(out: Path, metrics: list[dict], seconds: tuple[float, float]) -> list[str]:
    """The report's section on the generator: what ran, its loss, and what its samples can show."""
    summary = json.loads((out / "samples" / "_summary.json").read_text())
    classes = sum(1 for p in (out / "samples" / "images").iterdir() if p.is_dir())
    loss = [m["loss"] for m in metrics if "loss" in m]
    accuracy = [m["accuracy"] for m in metrics if "accuracy" in m]
    return [
        "## Class-conditional samples (jobs/train_generator.py, jobs/sample_generator.py)", "",
        f"The `{GENERATOR_PRESET}` MaskGIT generator learned the demo's token sequences for {metrics[-1]['step']} steps "
        f"({seconds[0]:.1f} s), then generated {SAMPLES_PER_CLASS} images for each of {classes} classes "
        f"({seconds[1]:.1f} s; {summary['per_worker_images_per_s']} images/s per worker for sampling and "
        "de-tokenization by the stage-2 tokenizer).",
        f"- generator loss {loss[0]:.3f} -> {loss[-1]:.3f}; masked-token accuracy {accuracy[0]:.3f} -> "
        f"{accuracy[-1]:.3f}",
        "- `samples.png`: one row per class (a photo's crops share a label): a real crop of the class, then "
        "its samples.", "",
        "What to expect: these weights were all trained on this machine minutes ago, offline: a generator of "
        "0.2 M parameters on a few dozen images' tokens, decoded by the demo's 32-px tokenizer. The samples "
        "take the colours and coarse layout of their class at best; they are a check that tokens -> "
        "generator -> images runs end to end, not a measure of the method. The paper's generators are "
        "trained on 1.28 M ImageNet images for 500k steps (`--generator hf://yucornetto/generator_titok_l32_imagenet "
        "--tokenizer hf://yucornetto/tokenizer_titok_l32_imagenet` on `jobs/sample_generator.py` with network "
        "access; README, Generation).", "",
        "![samples](samples.png)", "",
    ]
