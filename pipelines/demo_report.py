"""What `make demo` (jobs/demo.py) shows: its settings, its stand-ins offline, and its report.

    DemoConfig, perceptual_backbones, image_list   what the demo runs with (its teacher:
                        demo_teacher.py)
    write_report        report.md + reconstructions.png (inputs | reconstructions) + loss_curves.png
                        + samples.png (demo_generator.py) from the outputs of the jobs the demo ran
    reconstruct_photos  the sample photos through a released tokenizer (make demo-pretrained)
    attach_comparison   both runs side by side in the demo's report, whichever of them ran last

jobs/demo.py runs the real jobs in order; everything here only reads what they wrote.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from titok_core.metrics import psnr as psnr_db

from .demo_data import write_demo_images
from .demo_generator import GENERATOR_PRESET, SAMPLES_PER_CLASS, generator_section, samples_grid
from .preprocess import CENTER, apply_view, decode_and_preprocess, decode_stored_image, to_model_input, to_uint8
from .runtime import vgg16_weights

RULE = "-" * 78


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Args:
        output: where everything goes (runs/demo).
        images: a folder of the user's images instead of the bundled photos (ImageFolder or flat).
        photos / crops: how many bundled photos, and crops of each.
        stage1_steps / stage2_steps: override the demo recipes' step counts (None: the recipe's).
        generator_steps: override the demo generator's steps (None: demo_generator.GENERATOR_STEPS; 0: no
            generator step).
        workers: Ray Train workers.
        samples_per_shard: shard size (several shards show the per-shard commits).
        preset: the model preset and recipes (`demo`: 32 px, see titok_core/presets.py).
        resolution: image side the jobs resize and crop to (the preset's image_size).
        views: the precomputed views of each image.
        teacher_steps: training steps of the demo's own teacher (pipelines/demo_teacher.py).
    """

    output: Path
    images: Path | None = None
    photos: int | None = None
    crops: int = 4
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    generator_steps: int | None = None
    workers: int = 2
    samples_per_shard: int = 16
    preset: str = "demo"
    resolution: int = 32
    views: str = "center-flip"
    teacher_steps: int = 400
    timings: dict[str, float] = field(default_factory=dict)


def say(msg: str) -> None:
    print(f"\n[demo] {msg}", flush=True)


def image_list(folder: Path, dest: Path) -> Path:
    """A `path<TAB>label` list of a user folder: label = index of the image's sub-folder (0 if flat)."""
    exts = {".jpg", ".jpeg", ".png", ".webp", ".JPEG", ".JPG", ".PNG"}
    files = sorted(p for p in folder.rglob("*") if p.suffix in exts and p.is_file())
    if not files:
        raise RuntimeError(f"--images {folder}: no .jpg / .png / .webp files found")
    classes = sorted({p.parent for p in files})
    dest.write_text("".join(f"{p}\t{classes.index(p.parent)}\n" for p in files))
    return dest


def pretrained_lpips_available() -> bool:
    """Whether the LPIPS VGG16 weights can be had (cached, or downloadable)."""
    try:
        vgg16_weights()
        return True
    except RuntimeError:
        return False


def perceptual_backbones(preset: str) -> tuple[list[str], str]:
    """Stage 2's extra arguments for its perceptual backbones, and how the report names them. No
    download when the recipe has no perceptual term; random backbones (said so) when offline."""
    from .train.recipes import get_recipe
    gan = get_recipe(2, preset).gan
    if gan is not None and gan.perceptual_weight == 0:
        return ["--random-backbones"], "none (no perceptual term in this recipe)"
    if pretrained_lpips_available():
        return [], "pretrained"
    say("The pretrained LPIPS (VGG16) weights are not available offline: stage 2 uses randomly\n"
        "       initialised perceptual backbones (--random-backbones); pass --lpips-weights on a real run.")
    return ["--random-backbones"], "RANDOM (offline)"


def batch_args(cfg: DemoConfig, out: Path, stage: int) -> list[str]:
    """`--batch-size` for a folder smaller than the recipe's batch (a step needs that many images)."""
    from .train.recipes import get_recipe
    images = json.loads((out / "proxy" / "_summary.json").read_text())["images_total"]
    if images >= get_recipe(stage, cfg.preset).batch_size:
        return []
    return ["--batch-size", str(max(cfg.workers, images - images % cfg.workers))]


# ------------------------------------------------------------------------------------------- report
def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def last(metrics: list[dict[str, Any]], key: str) -> float | None:
    values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
    return values[-1] if values else None


def first(metrics: list[dict[str, Any]], key: str) -> float | None:
    values = [m[key] for m in metrics if isinstance(m.get(key), (int, float))]
    return values[0] if values else None


# One colour per series across both panels (matplotlib's cycle restarts on every axes).
SERIES_COLOURS = {"loss": "tab:blue", "accuracy": "tab:orange", "l2_loss": "tab:green",
                  "perceptual_loss": "tab:red", "gan_loss": "tab:purple"}


def loss_figure(stage1: list[dict], stage2: list[dict]):
    """The two panels of loss_curves.png; each panel's legend sits under its axes, clear of the titles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))

    def plot(ax, metrics: list[dict], key: str) -> list:
        pts = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        if not any(v for _, v in pts):  # a term the recipe turned off (the demo's perceptual and GAN terms)
            return []
        return ax.plot(*zip(*pts), label=key, color=SERIES_COLOURS[key])

    acc = axes[0].twinx()  # accuracy is in [0, 1], the loss in nats: two scales
    panels = [(axes[0], plot(axes[0], stage1, "loss") + plot(acc, stage1, "accuracy")),
              (axes[1], [line for key in ("l2_loss", "perceptual_loss", "gan_loss") for line in plot(axes[1], stage2, key)])]
    axes[0].set_title("stage 1: proxy codes")
    axes[0].set_ylabel("cross-entropy + quantizer loss")
    acc.set_ylabel("proxy-code accuracy")
    axes[1].set_title("stage 2: pixels")
    for ax, lines in panels:
        ax.set_xlabel("step")
        if lines:
            ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def loss_curves(out: Path, stage1: list[dict], stage2: list[dict]) -> Path:
    import matplotlib.pyplot as plt
    fig = loss_figure(stage1, stage2)
    path = out / "loss_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


DISPLAY = 256  # side of each picture in reconstructions.png; smaller images are enlarged (nearest)


def enlarge(images: np.ndarray, side: int = DISPLAY) -> np.ndarray:
    """(B, h, w, 3) uint8 -> (B, side, side, 3), each pixel a visible square (nearest neighbour)."""
    if images.shape[1] >= side:
        return images
    return np.stack([np.asarray(Image.fromarray(a).resize((side, side), Image.NEAREST)) for a in images])


def reconstructions(out: Path, n: int = 8) -> tuple[Path, float, int]:
    """Inputs | reconstructions of n images (centre view; one per label first: different photos), four pairs a row, enlarged to
    DISPLAY px; their mean PSNR (at the model's resolution); how many of them differ from each other."""
    from titok_core import load_model
    model = load_model(out / "stage2" / "model")
    proxy = pd.read_parquet(out / "proxy", columns=["key", "label", "image"]).sort_values("key")
    proxy = pd.concat([proxy.drop_duplicates("label"), proxy]).drop_duplicates("key").head(n)  # photos first
    tokens = pd.read_parquet(out / "tokens", columns=["key", "tokens"]).set_index("key")
    side = model.config.image_size
    inp = np.stack([apply_view(decode_stored_image(b), CENTER, side) for b in proxy.image])
    tok = torch.tensor(np.stack([np.stack(tokens.loc[k, "tokens"])[0] for k in proxy.key]).astype(np.int64))
    with torch.inference_mode():
        rec = to_uint8(model.decode_tokens(tok, clamp=True))
    psnr = float(psnr_db(torch.from_numpy(inp), torch.from_numpy(rec), max_value=255))
    distinct = len({r.tobytes() for r in rec})
    pairs = [np.concatenate([a, b], axis=1) for a, b in zip(enlarge(inp), enlarge(rec))]  # input | reconstruction
    pairs += [np.zeros_like(pairs[0])] * (-len(pairs) % 4)
    grid = np.concatenate([np.concatenate(pairs[i : i + 4], axis=1) for i in range(0, len(pairs), 4)], axis=0)
    path = out / "reconstructions.png"
    Image.fromarray(grid).save(path)
    return path, psnr, distinct


def token_stats(out: Path, codebook_size: int) -> dict[str, float]:
    df = pd.read_parquet(out / "tokens", columns=["tokens"])
    flat = np.concatenate([np.stack(t).reshape(-1) for t in df.tokens])
    counts = np.bincount(flat, minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    firsts = {np.asarray(t[0]).tobytes() for t in df.tokens}  # each image's first view
    return {"sequences": int(sum(len(t) for t in df.tokens)), "tokens_per_sequence": int(len(df.tokens.iloc[0][0])),
            "images": len(df), "distinct_sequences": len(firsts),
            "distinct": int((counts > 0).sum()), "codebook_size": codebook_size,
            "perplexity": float(math.exp(-(p * np.log(p)).sum()))}


def settings_text(cfg: DemoConfig, teacher_psnr: float) -> list[str]:
    """What the demo trains, and why it is not the official 256-px pipeline."""
    from titok_core import PRESETS
    m = PRESETS[cfg.preset]
    return [
        "## The demo's settings, and why", "",
        f"The jobs default to the paper's pipeline: 256-px images, the official MaskGIT-VQGAN teacher and a "
        f"ViT of width 512 to 1024. None of that trains on a 2-core CPU in minutes, so the demo runs the same "
        f"jobs with `--resolution {cfg.resolution}` and `--preset {cfg.preset}`:",
        f"- images resized and cropped to {m.image_size} px (views {cfg.views}); `reconstructions.png` enlarges "
        "them (each square is one pixel);",
        f"- a teacher trained here ({cfg.teacher_steps} steps, a 3-level MaskGIT-VQGAN with an "
        f"{m.image_size // m.pixel_vqgan.downsample_factor}x{m.image_size // m.pixel_vqgan.downsample_factor} grid "
        f"of {m.pixel_vqgan.codebook_size} codes; its own reconstructions: {teacher_psnr:.2f} dB) instead of the "
        "official one, which is 256-px only. A tokenizer learns no more than its teacher's codes hold;",
        f"- TiTok with {m.enc_patch_size}-px patches, width {m.enc_width}, {m.enc_layers} layers, "
        f"{m.num_latent_tokens} tokens from a codebook of {m.codebook_size} x {m.token_size}, weights initialised "
        f"with std {m.init_std} instead of the official 0.02: at this width the official init leaves the "
        "encoder's output almost independent of the image and every image collapses onto one token sequence;",
        "- the `demo` recipes (pipelines/train/recipes.py): stage 1 AdamW lr 1e-3, batch 16; stage 2 pixel L2 "
        "only (no perceptual term, no GAN: too few steps for them to help). The official recipes are unchanged.", "",
    ]


def write_report(cfg: DemoConfig, out: Path, teacher_psnr: float, perceptual: str) -> Path:
    from titok_core import load_model
    precompute = json.loads((out / "proxy" / "_summary.json").read_text())
    tokenize = json.loads((out / "tokens" / "_summary.json").read_text())
    s1, s2 = read_metrics(out / "stage1"), read_metrics(out / "stage2")
    curves = loss_curves(out, s1, s2)
    grid, psnr, distinct = reconstructions(out)
    generated = cfg.generator_steps != 0
    samples = samples_grid(out, enlarge) if generated else None
    model = load_model(out / "stage2" / "model")
    toks = token_stats(out, model.config.codebook_size)
    codes = np.concatenate([np.stack(c).reshape(-1) for c in pd.read_parquet(out / "proxy", columns=["proxy_codes"]).proxy_codes])
    baseline = Counter(codes.tolist()).most_common(1)[0][1] / len(codes)

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "n/a" if x is None else format(x, spec)

    lines = [
        "# titok-ray demo report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} in `{out}`.", "",
        "## What ran", "",
        "| step | what | wall time |", "|---|---|---|",
        f"| make_shards | {'your images' if cfg.images else 'crops of scikit-image sample photos'} -> "
        f"{len(list((out / 'shards').glob('*.tar')))} WebDataset shards | {cfg.timings.get('make_shards', 0):.1f} s |",
        f"| train teacher | {cfg.teacher_steps} steps, {cfg.resolution} px (pipelines/demo_teacher.py) | "
        f"{cfg.timings.get('teacher', 0):.1f} s |",
        f"| precompute_proxy | teacher: the one trained above, {cfg.resolution} px, views {cfg.views} | "
        f"{cfg.timings.get('precompute_proxy', 0):.1f} s |",
        f"| train stage 1 | {cfg.preset} preset, {last(s1, 'step')} steps, {cfg.workers} Ray Train workers | "
        f"{cfg.timings.get('train_stage1', 0):.1f} s |",
        f"| train stage 2 | {cfg.preset} preset, {last(s2, 'step')} steps, perceptual backbones: {perceptual} | "
        f"{cfg.timings.get('train_stage2', 0):.1f} s |",
        f"| tokenize | stage-2 model, views center-flip, every image verified | {cfg.timings.get('tokenize', 0):.1f} s |",
        *([f"| train_generator | `{GENERATOR_PRESET}` MaskGIT generator on the tokens | "
           f"{cfg.timings.get('train_generator', 0):.1f} s |",
           f"| sample_generator | {SAMPLES_PER_CLASS} images per class | {cfg.timings.get('sample_generator', 0):.1f} s |"]
          if generated else []),
        "", *settings_text(cfg, teacher_psnr), "## Counts and throughput", "",
        "| stage | images | quarantined | images/s |", "|---|---|---|---|",
        f"| precompute_proxy | {precompute['images_total']} | {precompute['errors_total']} | {precompute['images_per_s']} |",
        f"| train stage 1 | | | {fmt(last(s1, 'images_per_s'), '.1f')} |",
        f"| train stage 2 | | | {fmt(last(s2, 'images_per_s'), '.1f')} |",
        f"| tokenize | {tokenize['images_total']} | {tokenize['errors_total']} | {tokenize['images_per_s']} |",
        "", "## Training", "",
        f"- stage 1 loss: {fmt(first(s1, 'loss'))} -> {fmt(last(s1, 'loss'))}",
        f"- stage 1 proxy-code accuracy: {fmt(first(s1, 'accuracy'))} -> {fmt(last(s1, 'accuracy'))} "
        f"(most-frequent-code baseline {baseline:.4f})",
        f"- stage 2 reconstruction (L2) loss: {fmt(first(s2, 'l2_loss'))} -> {fmt(last(s2, 'l2_loss'))}; "
        f"training PSNR {fmt(first(s2, 'psnr'), '.2f')} -> {fmt(last(s2, 'psnr'), '.2f')} dB",
        "", "## Reconstructions", "",
        f"- PSNR of the {min(8, toks['images'])} reconstructions in `reconstructions.png`: {psnr:.2f} dB; "
        f"{distinct} of them differ from each other",
        f"- PSNR over every image (tokenize --verify-fraction 1): {tokenize['verify']['psnr_db']} dB; "
        f"LPIPS: {tokenize['verify']['lpips'] if tokenize['verify']['lpips'] is not None else 'n/a (weights offline)'}",
        "", "![reconstructions](reconstructions.png)", "", "![loss curves](loss_curves.png)", "",
        "## Tokens", "",
        f"- {toks['sequences']} sequences of {toks['tokens_per_sequence']} tokens; "
        f"{toks['distinct_sequences']} distinct sequences over the {toks['images']} images (first view)",
        f"- {toks['distinct']} of {toks['codebook_size']} codebook entries used, perplexity {toks['perplexity']:.1f}",
        "", *(generator_section(out, read_metrics(out / "generator"),
                                (cfg.timings.get("train_generator", 0), cfg.timings.get("sample_generator", 0)))
              if generated else []),
        "## Outputs", "",
        "- `proxy/`, `tokens/`: Parquet datasets (+ `_summary.json`, `_errors/`, `_success/`)",
        "- `stage1/`, `stage2/`, `generator/`: runs (`model/`, `metrics.jsonl`, `images/`, `tensorboard/`, "
        "`checkpoints/`)",
        "- `samples/`: the generator's images (`images/<class>/*.png`, the ADM `.npz`, `tokens/` Parquet)",
        "- next: `python jobs/<job>.py --help`; README.md, section 'Running on a cluster'",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    assert curves.exists() and grid.exists() and (samples is None or samples.exists())
    attach_comparison(out)
    return report


def closing_message(out: Path, report: Path) -> str:
    """What the demo prints last: where to look, and what next."""
    return (f"\n{RULE}\nDone. Look at:\n"
            f"  {report}\n  {out / 'reconstructions.png'}   inputs | reconstructions\n"
            f"  {out / 'samples.png'}   per class: a real crop | the generator's samples\n"
            f"  {out / 'loss_curves.png'}\n  {out}/proxy, {out}/tokens   Parquet (pandas, DuckDB, HF datasets)\n"
            f"  {out}/stage1/model, {out}/stage2/model, {out}/generator/model   checkpoints (titok_core.load_model)\n"
            f"Next: python jobs/<job>.py --help for every job; README.md 'Running on a cluster' to scale out.\n{RULE}")


def pretrained_message(tokens: int, n: int, psnr: float, grid: Path, both: Path | None) -> str:
    """What make demo-pretrained prints last."""
    return (f"\n{RULE}\nTiTok-L-32 ({tokens} tokens per image) on {n} crops: mean PSNR {psnr:.2f} dB"
            f"\n  {grid}   inputs | reconstructions\n" + (f"  {both}   input | demo | L-32\n" if both else "") + RULE)


# ------------------------------------------------------------------------------------ pretrained
PRETRAINED_SUFFIX = "-pretrained"  # make demo -> runs/demo, make demo-pretrained -> runs/demo-pretrained
COMPARISON_HEADER = "## Next to the released TiTok-L-32"


def reconstruct_photos(model: torch.nn.Module, out: Path, photos: int | None, crops: int) -> tuple[Path, float, int]:
    """The demo photos' centre crops through `model` (encode -> decode): (grid path, mean PSNR, images).

    Also writes reconstructions.npz (keys, inputs, reconstructions) and summary.json, which the demo's
    report reads to put this run next to its own (`attach_comparison`)."""
    folder = write_demo_images(out / "images", photos, crops)
    files = sorted(folder.rglob("*.png"))
    inp = np.stack([apply_view(decode_and_preprocess(p.read_bytes()), CENTER) for p in files])
    rec = []
    with torch.inference_mode():
        for i in range(0, len(inp), 4):
            x = to_model_input(inp[i : i + 4])
            rec.append(to_uint8(model.decode_tokens(model.encode(x), clamp=True)))
    rec = np.concatenate(rec)
    psnr = float(psnr_db(torch.from_numpy(inp), torch.from_numpy(rec), max_value=255))
    grid = np.concatenate([np.concatenate([a, b], axis=1) for a, b in zip(inp, rec)], axis=0)  # input | recon rows
    path = out / "reconstructions.png"
    Image.fromarray(grid).save(path)
    keys = [p.relative_to(folder).with_suffix("").as_posix() for p in files]  # = the demo's sample keys
    np.savez_compressed(out / "reconstructions.npz", keys=np.array(keys), inputs=inp, reconstructions=rec)
    (out / "summary.json").write_text(json.dumps({"tokens": int(model.config.num_latent_tokens), "images": len(inp),
                                                  "psnr_db": round(psnr, 2)}, indent=2))
    return path, psnr, len(inp)


def paired_run(out: Path) -> Path:
    """The other run of the pair: runs/demo <-> runs/demo-pretrained."""
    name = out.name
    other = name[: -len(PRETRAINED_SUFFIX)] if name.endswith(PRETRAINED_SUFFIX) else name + PRETRAINED_SUFFIX
    return out.parent / other


def attach_comparison(run: Path, n: int = 8) -> Path | None:
    """`run` is either of the pair (runs/demo, runs/demo-pretrained). When both exist: side_by_side.png
    in the demo's folder (input | the demo's tokenizer | the released L-32, the same photos) and a
    section at the end of the demo's report.md. None if the other run is missing, or they share no
    photos (e.g. the demo ran on --images)."""
    from titok_core import load_model
    demo, pretrained = (paired_run(run), run) if run.name.endswith(PRETRAINED_SUFFIX) else (run, paired_run(run))
    if not ((demo / "report.md").exists() and (demo / "tokens").is_dir() and (pretrained / "summary.json").exists()):
        return None
    pre = np.load(pretrained / "reconstructions.npz")
    tokens = pd.read_parquet(demo / "tokens", columns=["key", "tokens"]).set_index("key")
    both = [i for i, k in enumerate(pre["keys"]) if k in tokens.index][:n]
    if not both:
        return None
    keys = [str(pre["keys"][i]) for i in both]
    model = load_model(demo / "stage2" / "model")
    tok = torch.tensor(np.stack([np.stack(tokens.loc[k, "tokens"])[0] for k in keys]).astype(np.int64))
    with torch.inference_mode():
        ours = to_uint8(model.decode_tokens(tok, clamp=True))  # at the demo's resolution
    side = pre["inputs"].shape[1]
    ours_inputs = np.stack([np.asarray(Image.fromarray(a).resize(ours.shape[1:3], Image.BICUBIC)) for a in pre["inputs"][both]])
    ours_psnr = float(psnr_db(torch.from_numpy(ours_inputs), torch.from_numpy(ours), max_value=255))
    pre_psnr = float(psnr_db(torch.from_numpy(pre["inputs"][both]), torch.from_numpy(pre["reconstructions"][both]), max_value=255))
    big = [np.asarray(Image.fromarray(a).resize((side, side), Image.NEAREST)) for a in ours]  # its pixels, enlarged
    rows = [np.concatenate([pre["inputs"][i], b, pre["reconstructions"][i]], axis=1) for i, b in zip(both, big)]
    path = demo / "side_by_side.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    summary = json.loads((pretrained / "summary.json").read_text())
    section = [
        COMPARISON_HEADER, "",
        f"The same {len(both)} photos (centre crops), from `{pretrained}` (make demo-pretrained).",
        "Columns: input | this demo's tokenizer (trained here, its pixels enlarged) | the released TiTok-L-32.", "",
        "| tokenizer | resolution | PSNR on these photos |", "|---|---|---|",
        f"| this demo | {ours.shape[1]} px | {ours_psnr:.2f} dB |",
        f"| released TiTok-L-32 ({summary['tokens']} tokens) | {side} px | {pre_psnr:.2f} dB |",
        "", "![side by side](side_by_side.png)", "",
    ]
    report = demo / "report.md"
    text = report.read_text().split(COMPARISON_HEADER)[0].rstrip("\n")
    report.write_text(text + "\n\n" + "\n".join(section))
    return path
