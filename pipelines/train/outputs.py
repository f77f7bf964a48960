"""What a training run writes besides checkpoints: metrics, TensorBoard, image grids, the exported model.

    <output>/metrics.jsonl      one JSON object per logged step
    <output>/metrics.csv        the same, fixed columns per stage
    <output>/tensorboard/       event files (scalars; the grids as images)
    <output>/images/step_XXXXXXXX.png   inputs (left) next to reconstructions (right), one row per image
    <output>/attempts.jsonl     one line per start of the worker group (first start, failure restarts, reruns)

Only rank 0 writes. For object-store outputs (s3://...) files are written to a local staging
directory and uploaded (`RunFiles.publish`) after each grid, at checkpoints and at the end; a
resumed run first downloads the metrics it will append to. Rows logged after the checkpoint a run
resumes from are dropped (they will be logged again), and TensorBoard purges them the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..storage import atomic_write_bytes, default_cache_dir, get_fs, is_local, join_url, local_path

log = logging.getLogger("titok.train")

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
IMAGES_DIR = "images"
ATTEMPTS = "attempts.jsonl"


class RunFiles:
    """Where rank 0 writes: the output itself when local, else a staging directory mirrored to it."""

    def __init__(self, output: str, storage_options: dict | None = None):
        self.output = output
        self.storage_options = storage_options
        self.remote = not is_local(output)
        if self.remote:
            digest = hashlib.sha256(output.encode()).hexdigest()[:16]
            self.root = Path(default_cache_dir()) / "runs" / digest
        else:
            self.root = Path(local_path(output))
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def download(self, rel: str) -> None:
        """Fetch the file or directory `rel` from a remote output into staging (a resumed run appends)."""
        if not self.remote:
            return
        fs, path = get_fs(join_url(self.output, rel), storage_options=self.storage_options)
        fs.invalidate_cache()
        for remote in fs.find(path) if fs.isdir(path) else ([path] if fs.exists(path) else []):
            target = self.path(rel) / posixpath.relpath(remote, path) if remote != path else self.path(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))

    def publish(self, *rels: str) -> None:
        """Upload files or directories from staging to the remote output (no-op for local outputs).

        File by file: fsspec's recursive `put` nests a directory inside an existing one."""
        if not self.remote:
            return
        for rel in rels:
            src = self.path(rel)
            if not src.exists():
                continue
            fs, path = get_fs(join_url(self.output, rel), storage_options=self.storage_options)
            for f in sorted(src.rglob("*")) if src.is_dir() else [src]:
                if f.is_file():
                    dest = path if f == src else posixpath.join(path, f.relative_to(src).as_posix())
                    fs.put_file(str(f), dest)


class MetricsLogger:
    """Metrics to stdout, JSONL, CSV and TensorBoard (rank 0 only).

    Args:
        files: the run's files.
        columns: the CSV columns after "step" (the stage's metric names).
        resume_step: the checkpoint step the run starts from; later rows are dropped.
    """

    def __init__(self, files: RunFiles, columns: list[str], resume_step: int = 0):
        self.files = files
        self.columns = ["step", "epoch", *columns]
        files.download(METRICS_JSONL)
        files.download(TENSORBOARD_DIR)
        self._truncate(resume_step)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            purge = resume_step + 1 if resume_step else None  # drop events of steps that will be redone
            self.tb = SummaryWriter(str(files.path(TENSORBOARD_DIR)), purge_step=purge)
        except ImportError:  # tensorboard not installed: the other sinks still work
            log.warning("tensorboard is not installed; metrics go to stdout, %s and %s only",
                        METRICS_JSONL, METRICS_CSV)

    def _truncate(self, resume_step: int) -> None:
        jsonl = self.files.path(METRICS_JSONL)
        rows = []
        if jsonl.exists():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            rows = [r for r in rows if r["step"] <= resume_step]
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with open(self.files.path(METRICS_CSV), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def log(self, step: int, metrics: dict[str, float], max_steps: int) -> None:
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with open(self.files.path(METRICS_JSONL), "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.files.path(METRICS_CSV), "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "epoch":
                    self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.flush()
        shown = " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "epoch")
        # logging, not print: Ray Train V2 tees a worker's print to stdout and to its logger (twice)
        log.info("step %d/%d | %s", step, max_steps, shown)

    def image(self, step: int, grid: np.ndarray) -> None:
        if self.tb is not None:
            self.tb.add_image("reconstructions", grid, step, dataformats="HWC")
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def make_grid(inputs: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Rows of [input | reconstruction]: (n, H, W, 3) uint8 each -> (n * H, 2 * W, 3) uint8."""
    assert inputs.shape == reconstructions.shape, (inputs.shape, reconstructions.shape)
    return np.concatenate([np.concatenate([a, b], axis=1) for a, b in zip(inputs, reconstructions)], axis=0)


def write_grid(files: RunFiles, step: int, grid: np.ndarray) -> Path:
    """Save a grid as images/step_XXXXXXXX.png (atomically) and publish it."""
    rel = f"{IMAGES_DIR}/step_{step:08d}.png"
    path = files.path(rel)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    atomic_write_bytes(str(path), buf.getvalue())
    files.publish(rel)
    return path


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place, replacing an older one."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
