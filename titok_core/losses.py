"""Training losses of both TiTok stages, as pure functions where possible.

Stage 1 (proxy codes):  proxy_code_loss + quantizer_weight * quantizer loss
Stage 2 (pixels):       reconstruction_loss + perceptual_weight * perceptual
                        + gan_weight * hinge_g_loss            (generator / decoders)
                        hinge_d_loss + lecam_weight * lecam_loss (discriminator, its own optimizer)

Numerically the official 1d-tokenizer `modeling/modules/losses.py` (ReconstructionLoss_Stage1 / _Stage2)
and `perceptual_loss.py`; `adaptive_gan_weight` is taming-transformers' VQGAN rule, which the official
TiTok recipe does not use (it weights the GAN term by a constant) and our recipes can switch on.

Pretrained backbones never download: `PerceptualLoss` and `ConvNeXtFeatureLoss` take a local
weights file (or look in torch's hub cache) and raise one `MissingWeightsError` line saying which
file to give when they cannot be had; fetching a URL is `pipelines.runtime.perceptual_loss`'s job.

Legend: B batch, K proxy codebook (1024), g decoder grid side, C codebook size of the tokenizer.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import reduce

# --------------------------------------------------------------------------------------------
# Stage 1


def proxy_code_loss(logits: Tensor, codes: Tensor) -> Tensor:
    """Cross-entropy of the decoder's proxy-code logits against the teacher's codes.

    Args:
        logits: (B, K, g, g) proxy-code logits (any float dtype; computed in float32).
        codes: (B, g*g) or (B, g, g) integer codes, row-major over the grid.

    Returns:
        Scalar mean over every grid position.
    """
    b, k = logits.shape[:2]
    return F.cross_entropy(logits.float().reshape(b, k, -1), codes.reshape(b, -1).long())


@torch.no_grad()
def proxy_code_accuracy(logits: Tensor, codes: Tensor) -> Tensor:
    """Fraction of grid positions whose argmax logit is the teacher's code (scalar float)."""
    b = logits.shape[0]
    return (logits.argmax(1).reshape(b, -1) == codes.reshape(b, -1)).float().mean()


# --------------------------------------------------------------------------------------------
# Stage 2: pixels and the GAN


def reconstruction_loss(inputs: Tensor, reconstructions: Tensor, kind: str = "l2") -> Tensor:
    """Pixel loss, float32. inputs / reconstructions: (B, 3, H, W) in [0, 1]; kind: "l2" or "l1"."""
    if kind == "l2":
        return F.mse_loss(reconstructions.float(), inputs.float())
    if kind == "l1":
        return F.l1_loss(reconstructions.float(), inputs.float())
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'l2' or 'l1'")


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(G(z))))."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator side of the hinge GAN: -mean D(G(z))."""
    return -logits_fake.float().mean()


def lecam_loss(real_mean: Tensor, fake_mean: Tensor, ema_real_mean: Tensor, ema_fake_mean: Tensor) -> Tensor:
    """LeCam regularisation (Tseng et al. 2021): keeps D's outputs near the EMA of the other side's.

    Args:
        real_mean / fake_mean: this step's mean D output on real / reconstructed images (scalars).
        ema_real_mean / ema_fake_mean: their exponential moving averages (`LeCamEMA`).
    """
    return F.relu(real_mean - ema_fake_mean).pow(2).mean() + F.relu(ema_real_mean - fake_mean).pow(2).mean()


class LeCamEMA(nn.Module):
    """EMA of the discriminator's mean outputs, kept as buffers so checkpoints carry it."""

    ema_real: Tensor
    ema_fake: Tensor

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def loss(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """LeCam loss against the current EMAs, then update them with this step's means."""
        real, fake = logits_real.float().mean(), logits_fake.float().mean()
        out = lecam_loss(real, fake, self.ema_real, self.ema_fake)
        with torch.no_grad():
            self.ema_real.mul_(self.decay).add_(real.detach() * (1 - self.decay))
            self.ema_fake.mul_(self.decay).add_(fake.detach() * (1 - self.decay))
        return out


def adaptive_gan_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's balance: |grad nll| / |grad g| at the generator's last layer (detached, clamped).

    Args:
        nll_loss: the non-adversarial part of the generator loss (reconstruction + perceptual).
        g_loss: the adversarial part (`hinge_g_loss`).
        last_layer: weight of the generator's last layer (e.g. the pixel decoder's conv_out).
        max_weight: upper clamp; the lower clamp is 0.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# --------------------------------------------------------------------------------------------
# Perceptual losses (frozen backbones)


class MissingWeightsError(RuntimeError):
    """Pretrained backbone weights are not available (offline, no local file): one line with the fix."""


VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
# torchvision vgg16.features indices -> LPIPS's five slices (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_LPIPS_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise MissingWeightsError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return sd


def vgg16_hub_file() -> str:
    """Where torch's hub cache keeps the VGG16 weights (`TORCH_HOME`); it may not exist."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG16_URL))


class PerceptualLoss(nn.Module):
    """LPIPS-VGG (the `lpips` package) as a frozen loss / metric: inputs in [0, 1].

    Args:
        pretrained: ImageNet VGG16 backbone. False builds a random backbone (for tests; the
            package's own linear heads still load, offline) and never touches the network.
        weights: local file with the backbone: torchvision's `vgg16-397923af.pth` (`features.*`)
            or a whole LPIPS state dict (`net.slice*`, `lin*`). Without it, torch's hub cache is
            looked in (nothing is downloaded here: `pipelines.runtime.perceptual_loss` fetches the
            file); when it is not there either, a `MissingWeightsError` says which file to give.
        resize: compare at this side length (bilinear, antialiased) instead of full resolution;
            None keeps full resolution. Only the debug recipe shrinks (LPIPS-VGG at 256 px costs
            about 0.8 s per image on one CPU core).
    """

    def __init__(self, pretrained: bool = True, weights: str | None = None, resize: int | None = None):
        super().__init__()
        import warnings

        import lpips
        # pnet_rand=True: lpips would otherwise ask torchvision to download VGG16 in its constructor.
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if weights is None and pretrained:
            weights = vgg16_hub_file()
            if not os.path.isfile(weights):
                raise MissingWeightsError(
                    f"LPIPS-VGG needs ImageNet VGG16 weights and {weights} is missing; download {VGG16_URL} "
                    "and pass its local path (--lpips-weights)")
        if weights is not None:
            self._load(_read_state_dict(weights), weights)
        self.resize = resize
        self.eval().requires_grad_(False)

    def _load(self, sd: dict[str, Tensor], source: str) -> None:
        if any(k.startswith("net.slice") for k in sd):
            self.lpips.load_state_dict(sd, strict=True)
            return
        mapped = {}
        for s, (lo, hi) in enumerate(_LPIPS_SLICES, start=1):
            for i in range(lo, hi):
                for p in ("weight", "bias"):
                    if f"features.{i}.{p}" in sd:
                        mapped[f"slice{s}.{i}.{p}"] = sd[f"features.{i}.{p}"]
        own = self.lpips.net.state_dict()
        if set(mapped) != set(own):
            raise MissingWeightsError(f"{source} is neither a torchvision VGG16 nor an LPIPS state dict")
        self.lpips.net.load_state_dict(mapped, strict=True)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # always eval: a frozen metric

    def forward(self, inputs: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """inputs / target: (B, 3, H, W) in [0, 1] -> LPIPS, "mean" / "sum" over the batch or "none": (B,)."""
        inputs, target = inputs.float(), target.float()
        if self.resize is not None:
            inputs, target = (F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False, antialias=True)
                              for x in (inputs, target))
        return reduce(self.lpips(inputs * 2 - 1, target * 2 - 1).flatten(), reduction)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvNeXtFeatureLoss(nn.Module):
    """The official recipe's "convnext_s" loss: MSE between ConvNeXt-S ImageNet logits of the two images.

    Both images are resized to 224 (bilinear, antialiased) and ImageNet-normalised, as in the
    official `PerceptualLoss("convnext_s")`. The backbone is timm's `convnext_small`.

    Args:
        pretrained: False builds a random network (tests only).
        weights: local file with timm `convnext_small` weights (.safetensors or torch state dict);
            required when pretrained, nothing is downloaded.
    """

    def __init__(self, pretrained: bool = True, weights: str | None = None):
        super().__init__()
        import timm
        self.net = timm.create_model("convnext_small", pretrained=False)
        if weights is not None:
            sd = _read_state_dict(weights)
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise MissingWeightsError(f"{weights} does not fit timm convnext_small "
                                          f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
        elif pretrained:
            raise MissingWeightsError(
                "the ConvNeXt-S perceptual loss needs local timm convnext_small weights "
                "(e.g. model.safetensors of timm/convnext_small.fb_in1k); pass the file (--convnext-weights)")
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "ConvNeXtFeatureLoss":
        return super().train(False)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        def logits(x: Tensor) -> Tensor:
            x = F.interpolate(x.float(), size=224, mode="bilinear", align_corners=False, antialias=True)
            return self.net((x - self.mean) / self.std)
        return F.mse_loss(logits(inputs), logits(target))


PERCEPTUAL_KINDS = ("lpips", "convnext_s", "lpips+convnext_s")


class CombinedPerceptualLoss(nn.Module):
    """The mean of several perceptual losses (the official "lpips-convnext_s" with equal weights)."""

    def __init__(self, losses: list[nn.Module]):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        return sum(loss(inputs, target) for loss in self.losses) / len(self.losses)


def build_perceptual_loss(kind: str, pretrained: bool = True, lpips_weights: str | None = None,
                          convnext_weights: str | None = None, resize: int | None = None) -> nn.Module:
    """A frozen perceptual loss by name: "lpips", "convnext_s" or "lpips+convnext_s".

    Args:
        pretrained: False gives randomly initialised backbones (tests; no files needed).
        lpips_weights / convnext_weights: local weights files (see the classes).
        resize: LPIPS comparison size (ConvNeXt always works at 224).
    """
    if kind not in PERCEPTUAL_KINDS:
        raise ValueError(f"unknown perceptual loss {kind!r}; use one of {PERCEPTUAL_KINDS}")
    parts: list[nn.Module] = []
    if "lpips" in kind:
        parts.append(PerceptualLoss(pretrained, lpips_weights, resize))
    if "convnext_s" in kind:
        parts.append(ConvNeXtFeatureLoss(pretrained, convnext_weights))
    return parts[0] if len(parts) == 1 else CombinedPerceptualLoss(parts)


__all__ = [
    "ConvNeXtFeatureLoss", "LeCamEMA", "MissingWeightsError", "PERCEPTUAL_KINDS", "PerceptualLoss",
    "VGG16_URL", "adaptive_gan_weight", "build_perceptual_loss", "hinge_d_loss", "hinge_g_loss", "lecam_loss",
    "proxy_code_accuracy", "proxy_code_loss", "reconstruction_loss", "vgg16_hub_file",
]
