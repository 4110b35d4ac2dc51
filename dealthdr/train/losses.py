"""The paper's loss (Eq. 9-10): L1 + 0.5 * VGG16 perceptual, both on mu-law tonemapped HDR.

VGG16 is defined here (no torchvision: its PyPI build does not import beside our torch) and
loads a torchvision-format ImageNet state dict (`features.N.weight`) from a local file. No
weights can be downloaded, so without a file the perceptual term is off and says so loudly.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import mu_law
from ..statedict import read_state_dict

log = logging.getLogger(__name__)
# torchvision vgg16 "D" configuration; M = 2x2 max-pool
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in torchvision's `features`


class VGG16Features(nn.Module):
    """torchvision's vgg16().features up to relu4_3, returning the tapped activations."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers[:_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out

    def load_torchvision(self, path: str | Path) -> None:
        """Load `features.*` weights of a torchvision VGG16 checkpoint (.pth or .safetensors)."""
        state = read_state_dict(path, "VGG16")
        own = self.state_dict()
        picked = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(f"{path} is not a torchvision VGG16 state dict: missing {missing[:3]}")
        self.load_state_dict(picked)


class HDRLoss(nn.Module):
    """L1(T(pred), T(gt)) + weight * sum_i L1(phi_i(T(pred)), phi_i(T(gt))).

    `white` > 0: both images are clipped at `white` and divided by it before T, the
    normalisation `dealthdr evaluate` scores with. Radiance above the short exposure's white
    is clipped in every input frame, so no network can recover it; without the clip a sun at
    1000x white dominates the L1 (T(1000) = 1.81 vs T(1) = 1) and drags the fit of everything
    the metric sees. 0 keeps the raw radiance (the paper normalises by its own GT range).
    """

    def __init__(self, vgg_weights: str | Path | None = None, vgg_weight: float = 0.5,
                 white: float = 0.0) -> None:
        super().__init__()
        if white < 0:
            raise ValueError(f"white must be >= 0 (0: no clipping), got {white}")
        self.white = white
        self.vgg_weight = vgg_weight
        self.vgg = None
        if vgg_weights:
            self.vgg = VGG16Features()
            self.vgg.load_torchvision(vgg_weights)
            self.vgg.requires_grad_(False).eval()
        elif vgg_weight > 0:
            log.warning("NO VGG16 WEIGHTS: training WITHOUT the perceptual term of Eq. 10 "
                        "(pass --vgg-weights with a torchvision vgg16 state dict to enable it)")

    @property
    def perceptual(self) -> bool:
        return self.vgg is not None and self.vgg_weight > 0

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.white > 0:
            pred, gt = pred.clamp(max=self.white) / self.white, gt.clamp(max=self.white) / self.white
        tp, tg = mu_law(pred), mu_law(gt)
        l1 = F.l1_loss(tp, tg)
        parts = {"l1": l1.detach()}
        total = l1
        if self.perceptual:
            vgg = sum(F.l1_loss(a, b) for a, b in zip(self.vgg(tp), self.vgg(tg)))
            parts["vgg"] = vgg.detach()
            total = total + self.vgg_weight * vgg
        return total, parts


def check_finite(loss: torch.Tensor, step: int, what: str) -> None:
    """Refuse a NaN or Inf loss before it reaches the weights: one diverged step would make
    every later checkpoint, and the final weights, NaN. The last checkpoint stays."""
    if not torch.isfinite(loss):
        raise ValueError(f"{what} loss is {float(loss)} at step {step}; the last checkpoint "
                         "is kept (lower --lr, or check the data)")


def flow_epe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean end-point error over pixels where the ground truth is known (not NaN)."""
    valid = torch.isfinite(gt).all(dim=1)
    err = (pred - torch.nan_to_num(gt)).norm(dim=1)
    return err[valid].mean() if valid.any() else err.sum() * 0
