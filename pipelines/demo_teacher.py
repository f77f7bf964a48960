"""The offline demo's teacher: a small MaskGIT-VQGAN trained on the demo's own images in seconds.

TiTok's stage 1 learns to predict a teacher's proxy codes, so the tokenizer can be no better than
its teacher. The official teacher (f16, 256 px) does not fit a 2-core demo, and a random one gives
codes that say nothing about the image: every reconstruction then comes out as the same grey
square. This one (`VQGAN_PRESETS["demo"]`: 32 px, an 8x8 grid of 256 codes) trains on pixel L2 +
its quantizer loss for a few hundred steps, enough that its own reconstructions resemble the inputs.

    train_demo_teacher(files, dest, resolution, views, steps)  -> (dest, its PSNR on the images)
    demo_teacher(cfg, out, images)  the same for jobs/demo.py, saying what it does
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from titok_core import VQGAN_PRESETS, MaskGITVQGAN, save_pretrained
from titok_core.metrics import psnr

from .demo_report import DemoConfig, say
from .preprocess import apply_view, decode_and_preprocess, to_model_input, view_specs

TEACHER_PRESET = "demo"


def load_views(files: list[Path], resolution: int, views: str) -> torch.Tensor:
    """(images, views, 3, r, r) model inputs: each file resized and cropped as the precompute job does."""
    specs = view_specs(views)
    bases = [decode_and_preprocess(p.read_bytes(), resolution=resolution) for p in files]
    return torch.stack([to_model_input(np.stack([apply_view(b, v, resolution) for v in specs])) for b in bases])


def train_demo_teacher(files: list[Path], dest: Path, resolution: int, views: str, steps: int,
                       batch_size: int = 16, lr: float = 2e-3, seed: int = 0) -> tuple[Path, float]:
    """Train the demo teacher on `files` and save it at `dest` (titok_core.save_pretrained layout)."""
    x = load_views(files, resolution, views)
    n, v = x.shape[:2]
    torch.manual_seed(seed)
    teacher = MaskGITVQGAN(VQGAN_PRESETS[TEACHER_PRESET])
    opt = torch.optim.Adam(teacher.parameters(), lr=lr)
    for _ in range(steps):
        batch = x[torch.randint(0, n, (batch_size,)), torch.randint(0, v, (batch_size,))]
        zq, _, quantizer_loss = teacher.quantize(teacher.encoder(batch), return_loss=True)
        loss = F.mse_loss(teacher.decoder(zq), batch) + quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    with torch.no_grad():
        centre = x[:, 0]
        quality = float(psnr(centre, teacher.decode(teacher.encode(centre)).clamp(0, 1)))
    save_pretrained(teacher, dest)
    return dest, quality


def demo_teacher(cfg: DemoConfig, out: Path, images: Path) -> tuple[str, float]:
    """The demo's teacher at `out/teacher`, trained on the image files under `images` (or listed in
    it, a `path<TAB>label` file): (its path, its own PSNR on them). Records its time in cfg.timings."""
    t0 = time.perf_counter()
    files = ([Path(line.split("\t")[0]) for line in images.read_text().splitlines() if line.strip()]
             if images.is_file() else sorted(p for p in images.rglob("*") if p.is_file()))
    say(f"training the demo's teacher: a small MaskGIT-VQGAN, {cfg.resolution}-px images, {cfg.teacher_steps} "
        f"steps on {len(files)} images\n       (the official 256-px teacher is far too slow for a 2-core demo)")
    path, quality = train_demo_teacher(files, out / "teacher", cfg.resolution, cfg.views, cfg.teacher_steps)
    say(f"teacher trained: its own reconstructions reach {quality:.2f} dB PSNR")
    cfg.timings["teacher"] = time.perf_counter() - t0
    return str(path), quality
